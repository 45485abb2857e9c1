"""Atomic writes: nothing at the final path on failure; readable like any new file on success."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap

import pytest

from scfm.atomic import atomic_path, clean_stale, temp_dir_beside, write_text_atomic


def test_failure_leaves_nothing(tmp_path):
    final = tmp_path / "sub" / "out.txt"
    with pytest.raises(RuntimeError), atomic_path(final) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert not final.exists() and list(final.parent.iterdir()) == []


def test_written_file_gets_the_umask_mode_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
        (tmp_path / "b.txt").write_text("x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "a.txt").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o644


def _killed_writer(tmp_path, code: str) -> None:
    """Run ``code`` in a child that SIGKILLs itself halfway, as a preempted job would."""
    script = textwrap.dedent(code) + "\nimport os, signal; os.kill(os.getpid(), signal.SIGKILL)\n"
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path)
    assert done.returncode == -signal.SIGKILL


def test_leftovers_of_a_killed_writer_are_removed_by_the_next_writer(tmp_path):
    _killed_writer(
        tmp_path,
        """
        from scfm.atomic import atomic_path, temp_dir_beside
        ctx = atomic_path("out.h5ad"); tmp = ctx.__enter__(); tmp.write_text("half")
        temp_dir_beside("shards")
        temp_dir_beside("out.h5ad", spill=True)
        """,
    )
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 3 and all(name.startswith(".") for name in left), left
    assert not (tmp_path / "out.h5ad").exists()
    # files of other outputs and of other kinds are not touched
    (tmp_path / ".out.h5ad.notes").write_text("mine")
    (tmp_path / ".out.h5ad.b.tmp").write_text("mine")
    (tmp_path / "out.h5ad.b").write_text("mine")

    write_text_atomic(tmp_path / "out.h5ad", "whole")
    spill = temp_dir_beside(tmp_path / "out.h5ad", spill=True)
    built = temp_dir_beside(tmp_path / "shards")
    after = sorted(p.name for p in tmp_path.iterdir())
    assert after == sorted(
        [".out.h5ad.notes", ".out.h5ad.b.tmp", "out.h5ad.b", "out.h5ad", spill.name, built.name]
    )
    assert (tmp_path / "out.h5ad").read_text() == "whole"


def test_a_live_spill_directory_survives_the_atomic_write_of_its_output(tmp_path):
    spill = temp_dir_beside(tmp_path / "x.h5ad", spill=True)
    (spill / "rows000.i32").write_bytes(b"1234")
    write_text_atomic(tmp_path / "x.h5ad", "x")
    assert (spill / "rows000.i32").read_bytes() == b"1234"
    assert clean_stale(tmp_path / "x.h5ad", "spill") == [spill]
    assert not spill.exists()


def test_a_suffix_without_tmp_still_gets_a_recognisable_name(tmp_path):
    with atomic_path(tmp_path / "t.tsv", suffix=".tsv") as tmp:
        assert tmp.name.startswith(".t.tsv.") and tmp.name.endswith(".tmp.tsv")
        tmp.write_text("a")
