# Slurm: a shim for snakemake-executor-plugin-slurm's job status, and checks of the profile.
#
# The plugin (2.8.0, the newest release) polls `sacct --format=JobIdRaw,State` and compares the
# state with a fixed list of failure states. sacct reports a cancelled job as `CANCELLED by
# <uid>`, which is not in that list: the plugin takes a scancel'ed or preempted-and-cancelled
# job for a running one, never applies `retries`, and the run hangs. `--slurm-status-command
# squeue` would avoid it only while the cluster keeps finished jobs in squeue (MinJobAge); the
# plugin itself falls back to sacct below 3x its polling interval, and a job gone from squeue
# is taken for a pending one. So the state is cut to its first word here, where the plugin reads
# it (tests/slurm/test_cluster.py checks the plugin still has that function and that a
# scancel'ed job is retried). Remove when the plugin matches the first word itself.
import os
import re as _re


def _slurm_first_word_states():
    try:
        import snakemake_executor_plugin_slurm as plugin
    except ImportError:  # no slurm plugin installed: nothing to patch
        return
    query = getattr(plugin, "query_job_status", None)
    if query is None:
        raise WorkflowError(
            "snakemake-executor-plugin-slurm has no query_job_status any more: check whether it "
            "now reads 'CANCELLED by <uid>' as CANCELLED and remove workflow/rules/slurm.smk's shim"
        )
    if getattr(query, "scfm_first_word", False):
        return

    async def first_word(command, logger):
        states, took = await query(command, logger)
        if states is not None:
            states = {job: state.split(" ", 1)[0] for job, state in states.items()}
        return states, took

    first_word.scfm_first_word = True
    plugin.query_job_status = first_word


_slurm_first_word_states()


def _unset_profile_variables():
    """(variable, where) for every `$VAR` of a resource value that is not set in the
    environment (Snakemake expands them when a job is submitted and keeps unset ones literally:
    sbatch would get `-A $SCFM_SLURM_ACCOUNT`)."""
    rs = workflow.resource_settings
    found = []
    scopes = [("default-resources", rs.default_resources or {})]
    scopes += [
        (f"set-resources {rule}", res) for rule, res in rs.overwrite_resources.items()
    ]
    for where, resources in scopes:
        for name, res in resources.items():
            raw = getattr(res, "raw", res)
            for var in _re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", str(raw)):
                if var not in os.environ:
                    found.append((var, f"{where}: {name}"))
    return found


if _unset := _unset_profile_variables():
    raise WorkflowError(
        "the profile uses environment variables that are not set (export them, see README "
        "'On a Slurm cluster'): "
        + "; ".join(f"${var} in {where}" for var, where in _unset)
    )
