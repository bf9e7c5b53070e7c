"""A damaged, foreign or half-written checkpoint is one clear line, never a traceback or a
wrong "finished" run; a checkpoint is on the disk before the pointer names it."""

from __future__ import annotations

import copy
import errno
import json
import os
import shutil

import numpy as np
import pytest
import torch
from conftest import make_folder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mamf.cli import main
from mamf.engine import checkpoint
from mamf.engine.checkpoint import Checkpointer
from mamf.methods.base import make_optimizer
from mamf.methods.finetune import trainable
from mamf.models import load_model
from mamf.system.errors import MamfError

STEP = "checkpoint-000000008"


def train_args(data, out, *extra):
    return ["train", "--method", "classical", "--model", "tiny-random-clip", "--data", str(data),
            "--out", str(out), "--steps", "8", "--batch-size", "8", "--quiet",
            "--set", "train.checkpoint_every=4", *extra]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("mamf: error")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def keep_checkpoints(monkeypatch) -> None:
    """A run that ends as if killed right after its last checkpoint: the checkpoints stay."""
    monkeypatch.setattr(Checkpointer, "clear", lambda self: None)


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, shared_colour_folder):
    """A run folder holding a checkpoint at its last step (8) and no weights yet."""
    out = tmp_path_factory.mktemp("interrupted") / "run"
    with pytest.MonkeyPatch.context() as mp:
        keep_checkpoints(mp)
        assert main(train_args(shared_colour_folder, out)) == 0
    (out / "model.safetensors").unlink()
    (out / "train.json").unlink()
    assert json.loads((out / "checkpoints" / "latest.json").read_text()) == {"checkpoint": STEP}
    return out


def stream_rng(meta: dict) -> dict:
    """The first generator state in a checkpoint's stream state."""
    return next(v for k, v in meta["stream_state"].items() if k.endswith("rng"))


def damage_state(run, change):
    path = run / "checkpoints" / STEP / "state.json"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def damage_header(path, change):
    """Rewrite a safetensors file's header (same length, padded), its data left as it is."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    change(header)
    text = json.dumps(header, separators=(",", ":")).encode()
    assert len(text) <= n
    path.write_bytes(data[:8] + text.ljust(n) + data[8 + n:])


def _retype(header):
    key = next(k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32")
    header[key]["dtype"] = "I32"  # four bytes a value as before: the file stays readable


def _reshape(header):
    key = next(k for k, v in header.items() if k != "__metadata__" and len(v["shape"]) == 2
               and v["shape"][0] != v["shape"][1])
    header[key]["shape"] = header[key]["shape"][::-1]


DAMAGES = {
    "a weight of another dtype": (lambda r: damage_header(
        r / "checkpoints" / STEP / "model.safetensors", _retype), "is I32, the model's is"),
    "a weight of another shape": (lambda r: damage_header(
        r / "checkpoints" / STEP / "model.safetensors", _reshape), "has shape"),
    "pointer holds a list": (lambda r: (r / "checkpoints/latest.json").write_text("[1]"),
                             "latest.json must name a checkpoint-<step> folder"),
    "pointer holds a string": (lambda r: (r / "checkpoints/latest.json").write_text('"x"'),
                               "latest.json must name"),
    "pointer holds a number": (lambda r: (r / "checkpoints/latest.json").write_text("3"),
                               "latest.json must name"),
    "pointer is not JSON": (lambda r: (r / "checkpoints/latest.json").write_bytes(b"\xff{"),
                            "latest.json is unreadable"),
    "pointer is a folder": (lambda r: ((r / "checkpoints/latest.json").unlink(),
                                       (r / "checkpoints/latest.json").mkdir()),
                            "latest.json is unreadable"),
    "pointer leads up": (lambda r: (r / "checkpoints/latest.json").write_text(
        json.dumps({"checkpoint": f"../../{r.name}/checkpoints/{STEP}"})), "latest.json must name"),
    "pointer is absolute": (lambda r: (r / "checkpoints/latest.json").write_text(
        json.dumps({"checkpoint": str(r / "checkpoints" / STEP)})), "latest.json must name"),
    "pointer names nothing": (lambda r: (r / "checkpoints/latest.json").write_text(
        json.dumps({"checkpoint": "checkpoint-000000012"})), "which is not a folder in it"),
    "truncated weights": (lambda r: os.truncate(r / "checkpoints" / STEP / "model.safetensors",
                                                1000), "model.safetensors is unreadable"),
    "truncated optimiser": (lambda r: os.truncate(
        r / "checkpoints" / STEP / "optimizer.safetensors", 100),
        "optimizer.safetensors is unreadable"),
    "state is a list": (lambda r: (r / "checkpoints" / STEP / "state.json").write_text("[]"),
                        "state.json is not a mapping"),
    "state is torn": (lambda r: (r / "checkpoints" / STEP / "state.json").write_text('{"st'),
                      "state.json is unreadable"),
    "state lacks keys": (lambda r: damage_state(r, lambda m: m.pop("losses")),
                         "state.json lacks losses"),
    "step is a string": (lambda r: damage_state(r, lambda m: m.update(step="8")),
                         "state.json holds step '8'"),
    "step is another folder's": (lambda r: damage_state(r, lambda m: m.update(step=4)),
                                 "holds step 4"),
    "losses too few": (lambda r: damage_state(r, lambda m: m.update(losses=m["losses"][:3])),
                       "does not hold 8 losses"),
    "generator state too short": (lambda r: damage_state(
        r, lambda m: m.update(generator_state=m["generator_state"][:10])),
        "no valid torch generator state"),
    "generator state of floats": (lambda r: damage_state(
        r, lambda m: m.update(generator_state=[0.5] * len(m["generator_state"]))),
        "no valid torch generator state"),
    "generator state out of bytes": (lambda r: damage_state(
        r, lambda m: m.update(generator_state=[300] * len(m["generator_state"]))),
        "no valid torch generator state"),
    "rng state of another kind": (lambda r: damage_state(
        r, lambda m: stream_rng(m).update(bit_generator="MT19937")),
        "no valid numpy generator state"),
    "rng state not numbers": (lambda r: damage_state(
        r, lambda m: stream_rng(m)["state"].update(state="abc")),
        "no valid numpy generator state"),
    "optimiser settings changed": (lambda r: damage_state(
        r, lambda m: m["param_groups"][0].update(lr="fast")), "optimiser settings are not"),
    "optimiser entry replaced": (lambda r: damage_state(
        r, lambda m: m["optimizer_scalars"].update({"0.exp_avg": 1.0})),
        "optimiser state for parameter 0 does not fit"),
    "optimiser entry for no parameter": (lambda r: damage_state(
        r, lambda m: m["optimizer_scalars"].update({"9999.step": 1})),
        "optimiser state for parameter 9999"),
    "optimiser entry misnamed": (lambda r: damage_state(
        r, lambda m: m["optimizer_scalars"].update({"step": 1})), "is not '<parameter index>"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_checkpoint_is_one_clear_line(interrupted, shared_colour_folder, tmp_path,
                                                capsys, damage):
    run = tmp_path / "run"
    shutil.copytree(interrupted, run)
    change, message = DAMAGES[damage]
    change(run)
    assert main(train_args(shared_colour_folder, run)) == 2
    line = one_error_line(capsys)
    assert "is damaged" in line and message in line, line
    assert (run / "checkpoints" / STEP).is_dir()  # nothing is deleted on the user's behalf


def test_the_undamaged_copy_resumes(interrupted, shared_colour_folder, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(interrupted, run)
    assert main(train_args(shared_colour_folder, run)) == 0
    assert json.loads((run / "train.json").read_text())["steps"] == 8


@pytest.mark.parametrize("content", ["{torn", "[]", '{"method": 1}', '"x"'])
def test_a_damaged_train_json_is_one_clear_line(interrupted, shared_colour_folder, tmp_path,
                                                capsys, content):
    run = tmp_path / "run"
    shutil.copytree(interrupted, run)
    assert main(train_args(shared_colour_folder, run)) == 0
    weights = (run / "model.safetensors").read_bytes()
    (run / "train.json").write_text(content)
    assert main(train_args(shared_colour_folder, run)) == 2
    assert "train.json is" in one_error_line(capsys)
    assert (run / "model.safetensors").read_bytes() == weights  # kept, not trained over


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("small") / "colours", n_classes=4, per_class=10)


@pytest.mark.parametrize("method, longer, shorter", [
    ("classical", ["--steps", "8"], ["--steps", "4"]),
    ("fomaml", ["--steps", "8"], ["--steps", "4"]),
    ("mamf", ["--schedule", "sequential", "--epochs", "2", "--set", "train.steps=null"],
     ["--schedule", "sequential", "--epochs", "1", "--set", "train.steps=null"]),
])
def test_a_checkpoint_past_the_last_step_is_refused(small_folder, tmp_path, capsys, monkeypatch,
                                                    method, longer, shorter):
    out = tmp_path / "run"

    def args(extra):
        return ["train", "--method", method, "--model", "tiny-random-clip", "--data",
                str(small_folder), "--out", str(out), "--ways", "3", "--batch-size", "8",
                "--quiet", "--set", "train.checkpoint_every=4", *extra]

    with monkeypatch.context() as mp:
        keep_checkpoints(mp)
        assert main(args(longer)) == 0
    pointed = json.loads((out / "checkpoints" / "latest.json").read_text())["checkpoint"]
    step = int(pointed.split("-")[1])
    for name in ("model.safetensors", "train.json", "config.yaml"):
        (out / name).unlink()  # the run folder of a longer run, killed after its last checkpoint
    assert main(args(shorter)) == 2
    line = one_error_line(capsys)
    assert f"is at step {step}, past the" in line and "belongs to another run" in line, line
    assert not (out / "train.json").exists()


# -- writing checkpoints ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def model():
    return load_model("tiny-random-clip")


def one_step(model) -> torch.optim.Optimizer:
    optimizer = make_optimizer(trainable(model), 1e-3)
    for p in trainable(model):
        p.grad = torch.full_like(p, 0.01)
    optimizer.step()
    return optimizer


def save(folder, model, step=1) -> Checkpointer:
    ck = Checkpointer(folder, 1)
    ck.save(step, model, one_step(model).state_dict(), {"rng": np.random.default_rng(1).bit_generator.state},
            torch.Generator().manual_seed(1), [0.5] * step)
    return ck


def test_checkpoint_files_reach_the_disk_before_the_pointer_moves(tmp_path, monkeypatch, model):
    folder = (tmp_path / "checkpoints").resolve()
    events = []
    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    def rename(src, dst):
        events.append(("rename", str(dst)))
        real_rename(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "rename", rename)
    save(folder, model)
    pointer = events.index(("replace", str(folder / "latest.json")))
    moved = events.index(("rename", str(folder / "checkpoint-000000001")))
    tmp = folder / ".checkpoint-000000001.tmp"
    before_move = {path for kind, path in events[:moved] if kind == "fsync"}
    assert {str(tmp / f) for f in ("model.safetensors", "optimizer.safetensors",
                                   "state.json")} | {str(tmp)} <= before_move
    assert ("fsync", str(folder)) in events[moved:pointer]  # the rename itself is durable
    assert ("fsync", str(folder)) in events[pointer:]  # and so is the pointer's


def test_a_half_written_checkpoint_is_removed_on_the_next_start(tmp_path, model):
    folder = tmp_path / "checkpoints"
    save(folder, model)
    partial = folder / ".checkpoint-000000002.tmp"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\0" * 100)
    resume = Checkpointer(folder, 1).restore(model)
    assert resume is not None and resume.step == 1
    assert not partial.exists()


def test_a_full_disk_while_saving_leaves_the_last_checkpoint(tmp_path, monkeypatch, model):
    folder = tmp_path / "checkpoints"
    save(folder, model, step=1)
    real = checkpoint.save_file

    def disk_full(tensors, path, **options):
        real(tensors, path, **options)
        os.truncate(path, 10)  # the first bytes made it, the rest did not
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint, "save_file", disk_full)
    with pytest.raises(MamfError, match=f"cannot write {folder}: No space left on device"):
        save(folder, model, step=2)
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-000000001", "latest.json"]
    monkeypatch.undo()
    assert Checkpointer(folder, 1).restore(model).step == 1


# -- fuzz: any state.json or latest.json restores or is refused -------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                 max_size=4),
    max_leaves=10)


def poke(value, data):
    """`value` with one part deep inside replaced, removed or added."""
    if isinstance(value, dict) and value and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(value)))
        out = dict(value)
        if data.draw(st.integers(0, 4)) == 0:
            del out[key]
        else:
            out[key] = poke(value[key], data)
        return out
    if isinstance(value, list) and value and data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(value) - 1))
        how = data.draw(st.sampled_from(["poke", "cut", "grow"]))
        if how == "cut":
            return value[:i]
        if how == "grow":
            return [*value, data.draw(JSON)]
        return [*value[:i], poke(value[i], data), *value[i + 1:]]
    if isinstance(value, bool):
        return data.draw(JSON)
    if isinstance(value, int) and data.draw(st.booleans()):
        return value + data.draw(st.integers(-3, 3))
    return data.draw(JSON)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, model):
    folder = tmp_path_factory.mktemp("fuzz") / "checkpoints"
    save(folder, model, step=3)
    return folder


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_state_file_restores_or_is_refused(saved, model, data):
    state_path = saved / "checkpoint-000000003" / "state.json"
    pointer = saved / "latest.json"
    originals = {state_path: state_path.read_bytes(), pointer: pointer.read_bytes()}
    target = data.draw(st.sampled_from([state_path, pointer]))
    valid = json.loads(originals[target])
    how = data.draw(st.sampled_from(["poke", "poke", "poke", "json", "bytes"]))
    if how == "bytes":
        content = data.draw(st.binary(max_size=64))
    else:
        value = data.draw(JSON) if how == "json" else poke(copy.deepcopy(valid), data)
        content = json.dumps(value).encode()
    target.write_bytes(content)
    try:
        try:
            ck = Checkpointer(saved, 1)
            resume = ck.restore(model)
            optimizer = make_optimizer(trainable(model), 1e-3)
            ck.load_optimizer(optimizer, resume.optimizer_state)
        except MamfError:
            return
        # what was accepted trains on: generators take their states and the optimiser steps
        for key, state in resume.stream_state.items():
            if key.endswith("rng") and state is not None:
                rng = np.random.default_rng()
                rng.bit_generator.state = state
                rng.integers(10)
        generator = torch.Generator()
        generator.set_state(resume.generator_state)
        torch.rand(1, generator=generator)
        for p in trainable(model):
            p.grad = torch.full_like(p, 0.01)
        optimizer.step()
        assert len(resume.losses) == resume.step
    finally:
        for path, text in originals.items():
            path.write_bytes(text)


@pytest.mark.parametrize("change, message", [(_retype, "is I32, the model's is"),
                                             (_reshape, "has shape")])
def test_trained_weights_of_another_dtype_or_shape_are_one_line(shared_colour_folder, tmp_path,
                                                               capsys, change, message):
    run = tmp_path / "run"
    assert main(train_args(shared_colour_folder, run)) == 0
    damage_header(run / "model.safetensors", change)
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--data", str(shared_colour_folder), "--out",
                 str(tmp_path / "out"), "--quiet"]) == 2
    line = one_error_line(capsys)
    assert "is damaged or of another model" in line and message in line, line
