"""scfm.paths: outputs that are inputs, inputs that are not regular files, unwritable outputs."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from scfm.atomic import atomic_path, temp_dir_beside, write_text_atomic
from scfm.errors import ScfmInputError, ScfmNotWritableError
from scfm.paths import (
    check_input,
    check_outputs_not_inputs,
    check_writable_dirs,
    input_problem,
    same_file,
)


def test_input_problem_names_the_type(tmp_path: Path) -> None:
    regular = tmp_path / "a.h5ad"
    regular.write_bytes(b"x")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "b").symlink_to("c")
    (tmp_path / "c").symlink_to("b")
    (tmp_path / "broken").symlink_to("nowhere")
    sock_path = tmp_path / "sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    try:
        assert input_problem(regular) is None
        assert input_problem(tmp_path, directory=True) is None
        assert input_problem(tmp_path) == "is a directory, not a regular file"
        assert input_problem(fifo) == "is a FIFO (named pipe), not a regular file"
        assert input_problem(sock_path) == "is a socket, not a regular file"
        assert input_problem("/dev/null") == "is a character device, not a regular file"
        assert input_problem(tmp_path / "b").startswith("is a symlink loop")
        assert input_problem(tmp_path / "broken") == (
            "is a broken symlink (to 'nowhere', which does not exist)"
        )
        assert input_problem(tmp_path / "missing") == "does not exist"
        assert input_problem(regular / "below") == "does not exist"  # ENOTDIR
    finally:
        sock.close()
    with pytest.raises(ScfmInputError, match=r"fifo: file: is a FIFO .*; expected an h5ad"):
        check_input(fifo, "file", "an h5ad")


def test_same_file_by_path_symlink_and_hard_link(tmp_path: Path, monkeypatch) -> None:
    a = tmp_path / "a.h5ad"
    a.write_bytes(b"counts")
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.h5ad").symlink_to("a.h5ad")
    (tmp_path / "hard.h5ad").hardlink_to(a)
    (tmp_path / "copy.h5ad").write_bytes(b"counts")
    monkeypatch.chdir(tmp_path)
    assert same_file("a.h5ad", a) == "the same path"  # relative vs absolute
    assert same_file(tmp_path / "sub" / ".." / "a.h5ad", a) == "the same path"
    assert same_file(tmp_path / "link.h5ad", a).startswith("through a symlink")
    assert same_file(tmp_path / "hard.h5ad", a) == "a hard link: same device and inode"
    assert same_file(tmp_path / "copy.h5ad", a) is None  # equal bytes, another file
    assert same_file(tmp_path / "new.h5ad", a) is None  # not there yet


def test_output_that_is_an_input_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    src = tmp_path / "x.h5ad"
    src.write_bytes(b"counts")
    check_outputs_not_inputs({"output": tmp_path / "y.h5ad"}, {"input": src, "model": None})
    with pytest.raises(ScfmInputError) as info:
        check_outputs_not_inputs({"output": src}, {"model": None, "input": src})
    err = info.value
    assert err.path == str(src) and err.field == "output"
    assert "is the input file" in err.problem and "would replace that input" in err.problem
    assert err.expected == "an output path that is none of the inputs (input)"
    assert src.read_bytes() == b"counts"


@pytest.fixture
def readonly_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on a read-only tmpfs (root only: chmod does not stop root)."""
    target = tmp_path / "ro"
    target.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a read-only file system needs root to mount a tmpfs")
    cmd = ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(target)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {done.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True)


def test_unwritable_output_directory_is_named(readonly_dir: Path) -> None:
    for final in (readonly_dir / "a.tsv", readonly_dir / "sub" / "a.tsv"):
        with pytest.raises(ScfmNotWritableError) as info:
            write_text_atomic(final, "x")
        text = str(info.value)
        assert text.startswith(f"cannot write {final}: its output directory {readonly_dir} ")
        assert "(Read-only file system)" in text and info.value.filename == str(readonly_dir)
    with pytest.raises(ScfmNotWritableError, match="output directory"):
        temp_dir_beside(readonly_dir / "shards")
    with pytest.raises(ScfmNotWritableError), atomic_path(readonly_dir / "b.h5ad"):
        pass
    with pytest.raises(ScfmNotWritableError, match=rf"the output directory {readonly_dir} "):
        check_writable_dirs([readonly_dir.parent])  # found one level below the root


def test_writable_trees_pass(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "results" / "qc").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    check_writable_dirs(["results", "resources", "logs"])  # missing ones: the parent counts


def test_config_file_that_is_a_fifo_is_refused_not_read(tmp_path: Path, capsys) -> None:
    from scfm.cli import main
    from scfm.config import load_config
    from scfm.errors import ScfmConfigError

    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)  # reading it would block forever
    with pytest.raises(ScfmConfigError, match=r"the config file is a FIFO \(named pipe\)"):
        load_config(fifo)
    assert main(["validate-config", str(tmp_path / "missing.yaml")]) == 2
    assert "the config file does not exist; expected a YAML file" in capsys.readouterr().err
