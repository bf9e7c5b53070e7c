"""Output that cannot be written (a file where a folder should be, a read-only folder, a full
disk) is one `mamf: error:` line naming the path, and nothing already written is lost.

Tests run as root, for whom chmod does not make a folder read-only: a read-only mount and a full
disk are simulated at the system-call layer instead.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os

import pytest
from safetensors import SafetensorError

from mamf.cli import main
from mamf.runs import run_folder


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("mamf: error")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def evaluate(data, out):
    return main(["evaluate", "--model", "tiny-random-clip", "--data", str(data), "--out",
                 str(out), "--ways", "2", "--quiet"])


def train(data, out):
    return main(["train", "--method", "classical", "--model", "tiny-random-clip", "--data",
                 str(data), "--out", str(out), "--steps", "8", "--batch-size", "8", "--quiet",
                 "--set", "train.checkpoint_every=4"])


def experiment(data, out):
    config = data.parent / "experiment.yaml"
    config.write_text(json.dumps({"model": "tiny-random-clip", "methods": ["zeroshot"],
                                  "datasets": {"c": {"root": str(data), "ways": [2]}}}))
    return main(["experiment", str(config), "--out", str(out), "--quiet"])


def build_data(data, out):
    return main(["data", "counting", "--out", str(out)])


COMMANDS = {"evaluate": evaluate, "train": train, "experiment": experiment, "data": build_data}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("where", ["is a file", "under a file"])
def test_an_out_that_is_a_file_is_one_line(colour_folder, tmp_path, capsys, command, where):
    blocker = tmp_path / "taken"
    blocker.write_text("a file")
    out = blocker if where == "is a file" else blocker / "deeper" / "out"
    assert COMMANDS[command](colour_folder, out) == 2
    line = one_error_line(capsys)
    assert str(blocker) in line and ("is a file, not a folder" in line or
                                     "is not a folder" in line), line
    assert blocker.read_text() == "a file"


def refuse_writes(monkeypatch, folder, code: int) -> None:
    """Writes under `folder` fail with `code` (EROFS: a read-only mount; ENOSPC: a full disk)."""
    folder = os.path.abspath(folder)

    def under(path) -> bool:
        return isinstance(path, (str, os.PathLike)) and \
            os.path.abspath(os.fspath(path)).startswith(folder)

    def refuse(path):
        raise OSError(code, os.strerror(code), os.fspath(path))

    real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir

    def fake_open(file, mode="r", *args, **kwargs):
        if under(file) and set(mode) & set("wax+"):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def fake_os_open(path, flags, *args, **kwargs):
        if under(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if under(path) and not os.path.exists(path):
            refuse(path)
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)


def test_a_read_only_output_folder_is_one_line(colour_folder, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    refuse_writes(monkeypatch, out, errno.EROFS)
    assert evaluate(colour_folder, out) == 2
    line = one_error_line(capsys)
    assert f"cannot write {out}" in line and "Read-only file system" in line, line


def test_a_read_only_cache_folder_is_one_line(colour_folder, tmp_path, capsys, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("MAMF_CACHE_DIR", str(cache))
    refuse_writes(monkeypatch, cache, errno.EROFS)
    assert evaluate(colour_folder, tmp_path / "out") == 2
    line = one_error_line(capsys)
    assert f"cannot write {cache}" in line and "Read-only file system" in line, line
    assert "MAMF_CACHE_DIR" in line


def test_a_cache_folder_under_a_file_is_one_line(colour_folder, tmp_path, capsys, monkeypatch):
    (tmp_path / "taken").write_text("a file")
    monkeypatch.setenv("MAMF_CACHE_DIR", str(tmp_path / "taken" / "cache"))
    assert evaluate(colour_folder, tmp_path / "out") == 2
    line = one_error_line(capsys)
    assert "taken is a file" in line and "MAMF_CACHE_DIR" in line, line


def test_a_full_disk_while_building_the_cache(colour_folder, tmp_path, capsys, monkeypatch):
    """The cache is memory-mapped: its blocks are reserved first, so a full disk is an error
    there rather than a SIGBUS when a page is written."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("MAMF_CACHE_DIR", str(cache))

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    assert evaluate(colour_folder, tmp_path / "out") == 2
    line = one_error_line(capsys)
    assert f"cannot write {cache}" in line and "No space left on device" in line, line
    assert list(cache.iterdir()) == []  # the half-made array is gone


def test_a_full_disk_while_appending_results(colour_folder, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    real_write = os.write

    def write(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(out)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    assert evaluate(colour_folder, out) == 2
    line = one_error_line(capsys)
    assert f"cannot write {out / 'results.jsonl'}: No space left on device" in line, line


def test_a_full_disk_while_replacing_a_file(colour_folder, tmp_path, capsys, monkeypatch):
    """fsync is where a full disk shows for delayed allocation; no temporary file stays."""
    out = tmp_path / "out"
    real_fsync = os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(out)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert evaluate(colour_folder, out) == 2
    line = one_error_line(capsys)
    assert f"cannot write {out / 'configs'}" in line and "No space left on device" in line, line
    assert sorted(p.name for p in out.iterdir()) == [".mamf.system.lock", "configs"]
    assert not any((out / "configs").iterdir())  # the folder only, no torn file


def test_a_full_disk_at_the_final_weights_keeps_the_checkpoint(shared_colour_folder, tmp_path,
                                                               capsys, monkeypatch):
    out = tmp_path / "run"

    def full(model, path):
        with open(path, "wb") as f:
            f.write(b"\0" * 10)
        raise SafetensorError("Error while serializing: I/O error: No space left on device "
                              "(os error 28)")

    with monkeypatch.context() as mp:
        mp.setattr(run_folder, "save_model", full)
        assert train(shared_colour_folder, out) == 2
    line = one_error_line(capsys)
    assert f"cannot write {out / 'model.safetensors'}" in line and "No space left" in line, line
    assert not (out / "model.safetensors").exists() and not (out / ".model.safetensors.tmp").exists()
    assert (out / "checkpoints" / "latest.json").is_file()  # nothing trained is lost
    assert train(shared_colour_folder, out) == 0
    assert json.loads((out / "train.json").read_text())["steps"] == 8
