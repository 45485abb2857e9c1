"""Snakemake adapter: rule train -> `python -m scfm.train`, under torchrun when there are GPUs."""

import json
import sys
from pathlib import Path

import _scfm_path  # noqa: F401 - makes this checkout's src/ importable in any env

from scfm.atomic import write_text_atomic
from scfm.registry import register_outputs
from scfm.train.launch import launch_command, run_forwarding_signals

out = Path(snakemake.params.out)
out.mkdir(parents=True, exist_ok=True)
write_text_atomic(out / "run.json", json.dumps(snakemake.params.run, indent=2))
write_text_atomic(out / "model.json", json.dumps(snakemake.params.model, indent=2))
cmd = launch_command(
    out / "run.json",
    out / "model.json",
    snakemake.input.manifest,
    out,
    gpus=int(snakemake.resources.get("gpu", 0) or 0),
    log=snakemake.log[0],
)
# exit code 75 = stopped by SIGTERM/SIGUSR1 after a checkpoint: the retry resumes from it.
# Signals to this adapter go on to the trainer, and the adapter waits for its exit status.
code = run_forwarding_signals(cmd)
if code == 0:
    register_outputs(snakemake, kind="model")  # no-op unless registry.enabled
sys.exit(code)
