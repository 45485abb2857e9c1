"""The Slurm profiles, checked by Snakemake itself (dry runs; no cluster needed).

Unset SCFM_SLURM_* variables stop the run before any submission and are named; a command-line
`--set-resources` of one rule leaves every other rule's memory and runtime as they were (they
live in the rules); the CPU profile asks for no GPUs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from _dag import run_env, workdir

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
ALL = {
    "SCFM_SLURM_ACCOUNT": "lab",
    "SCFM_SLURM_PARTITION": "short",
    "SCFM_SLURM_GPU_PARTITION": "gpu",
}


@pytest.fixture(scope="module")
def wd(tmp_path_factory) -> Path:
    return workdir(tmp_path_factory.mktemp("profiles") / "wd", tmp_path_factory)


def dry_run(wd: Path, profile: str, env: dict[str, str], *args: str):
    base = {k: v for k, v in run_env().items() if not k.startswith("SCFM_SLURM_")}
    return subprocess.run(
        [str(BIN / "snakemake"), "--profile", profile, "-n", "-F", *args],
        cwd=wd,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def job_resources(out: str, rule: str) -> str:
    """The `resources:` line of the first job of ``rule`` in a dry run's output."""
    block = out[out.index(f"rule {rule}:") :]
    return next(line for line in block.splitlines() if line.strip().startswith("resources:"))


@pytest.mark.parametrize(
    ("profile", "unset"),
    [
        ("profiles/slurm", "SCFM_SLURM_GPU_PARTITION"),
        ("profiles/slurm", "SCFM_SLURM_ACCOUNT"),
        ("profiles/slurm-cpu", "SCFM_SLURM_PARTITION"),
    ],
)
def test_unset_variable_stops_before_submission_naming_it(wd, profile, unset):
    env = {k: v for k, v in ALL.items() if k != unset}
    res = dry_run(wd, profile, env)
    assert res.returncode != 0
    err = res.stdout + res.stderr
    assert f"${unset} in " in err and "not set" in err
    assert "rule download:" not in err  # stopped before the DAG, let alone sbatch


def test_one_rule_override_keeps_every_other_rules_resources(wd):
    res = dry_run(wd, "profiles/slurm-cpu", ALL, "--set-resources", "qc:mem_mb=1234")
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    assert "mem_mb=1234" in job_resources(out, "qc")
    download = job_resources(out, "download")
    assert "runtime=720" in download and "mem_mb=16000" in download
    assert "mem_mb=4000" in job_resources(out, "shard")
    train = job_resources(out, "train")
    assert "runtime=2880" in train and "gpu" not in train  # the CPU profile asks for no GPU
    assert "slurm_partition=short" in train and "slurm_account=lab" in train


def test_gpu_profile_asks_train_for_gpus_on_the_gpu_partition(wd):
    res = dry_run(wd, "profiles/slurm", ALL)
    assert res.returncode == 0, res.stderr[-3000:]
    train = job_resources(res.stdout + res.stderr, "train")
    assert "gpu=4" in train and "slurm_partition=gpu" in train and "cpus_per_gpu=8" in train


def test_status_shim_reads_cancelled_by_uid_as_cancelled(monkeypatch):
    """workflow/rules/slurm.smk's shim, run against the installed plugin: sacct's
    `CANCELLED by 0` becomes `CANCELLED` (a failure state of the plugin), other states stay."""
    import asyncio
    import logging
    from types import SimpleNamespace

    import snakemake_executor_plugin_slurm as plugin
    from snakemake_executor_plugin_slurm.job_status_query import query_job_status_sacct

    # the plugin still polls sacct's State column through this function (else: revisit the shim)
    assert "--format=JobIdRaw,State" in query_job_status_sacct("run")
    monkeypatch.setattr(plugin, "query_job_status", plugin.query_job_status)
    settings = SimpleNamespace(default_resources={}, overwrite_resources={})
    text = (Path(__file__).parents[2] / "workflow/rules/slurm.smk").read_text()
    exec(
        compile(text, "slurm.smk", "exec"),
        {"workflow": SimpleNamespace(resource_settings=settings), "WorkflowError": RuntimeError},
    )
    command = "printf '1|CANCELLED by 0\\n2|RUNNING\\n3|REQUEUED\\n'"
    states, _ = asyncio.run(plugin.query_job_status(command, logging.getLogger("t")))
    assert states == {"1": "CANCELLED", "2": "RUNNING", "3": "REQUEUED"}
    assert "CANCELLED" in plugin_fail_states()


def plugin_fail_states() -> str:
    """The plugin's source where it lists the states it counts as failed."""
    import inspect

    import snakemake_executor_plugin_slurm as plugin

    src = inspect.getsource(plugin.Executor.check_active_jobs)
    return src[src.index("fail_stati") : src.index(")", src.index("fail_stati"))]
