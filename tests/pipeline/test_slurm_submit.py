"""The slurm profile's GPU training job, as the slurm executor plugin would submit it.

The plugin turns a `tasks` resource of a GPU job into --ntasks-per-gpu, and the job then runs
once per GPU (snakemake-executor-plugin-slurm issues 316 and 459). Our train job must be one
Slurm task running torchrun, which starts the per-GPU processes itself.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import yaml
from snakemake_executor_plugin_slurm.submit_string import get_submit_command
from snakemake_executor_plugin_slurm.utils import set_gres_string
from snakemake_executor_plugin_slurm_jobstep import get_cpu_setting, get_gpu_setting

REPO = Path(__file__).resolve().parents[2]


class Resources(dict):
    """Snakemake's resources: mapping with attribute access."""

    __getattr__ = dict.get


def train_job() -> SimpleNamespace:
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    res = Resources({**profile["default-resources"], **profile["set-resources"]["train"]})
    return SimpleNamespace(resources=res, threads=1, name="train", is_group=lambda: False)


def test_train_job_is_one_task_with_all_gpus():
    job = train_job()
    assert "tasks" not in job.resources and "tasks_per_gpu" not in job.resources
    params = {
        "run_uuid": "u",
        "slurm_logfile": "l",
        "comment_str": "train",
        "account": "-A lab",
        "partition": "-p gpu",
        "workdir": str(REPO),
    }
    sbatch = get_submit_command(job, params) + set_gres_string(job)
    assert "--ntasks-per-gpu" not in sbatch
    assert f"--gpus={job.resources['gpu']}" in sbatch
    assert f"--mem {job.resources['mem_mb']}" in sbatch
    # inside the allocation the jobstep plugin runs the rule once: srun -n1 with CPUs per GPU
    assert get_cpu_setting(job, True) == f"--cpus-per-gpu={job.resources['cpus_per_gpu']}"
    assert get_gpu_setting(job) != ""
