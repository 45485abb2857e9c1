"""Training: the loop, checkpoints, DDP set-up, loss-curve figures.

``train(run_cfg, model_cfg, manifest_path, out_dir)`` trains (or resumes) a run;
``python -m scfm.train`` (or ``torchrun ... -m scfm.train``) is its command line.
"""

from scfm.train.checkpoint import CheckpointManager, export_model, load_model_file
from scfm.train.config import ObjectiveSpec, OptimizerConfig, RunConfig, ScheduleConfig
from scfm.train.plots import plot_loss_curves
from scfm.train.trainer import REQUEUE_EXIT_CODE, Schedule, TrainingDivergedError, train

__all__ = [
    "REQUEUE_EXIT_CODE",
    "CheckpointManager",
    "ObjectiveSpec",
    "OptimizerConfig",
    "RunConfig",
    "Schedule",
    "ScheduleConfig",
    "TrainingDivergedError",
    "export_model",
    "load_model_file",
    "plot_loss_curves",
    "train",
]
