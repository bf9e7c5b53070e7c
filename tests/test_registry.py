"""Methods and task samplers are plug-ins: one registry each, one training loop, one resume path."""

from __future__ import annotations

import ast
import pathlib
import re

import pytest
import torch

from mamf import methods, protocols
from mamf.cli import main
from mamf.config import build_config
from mamf.engine.checkpoint import Checkpointer
from mamf.engine.training import train
from mamf.methods.base import unregister
from mamf.methods.classical import Classical
from mamf.methods.presentation import Presentation
from mamf.runs.experiment import load_experiment, run_experiment
from mamf.runs.prepare import prepare
from mamf.system.errors import MamfError
from mamf.tasks import samplers

BASE = {"model": "tiny-random-clip", "train.lr": 1e-3, "train.batch_size": 8, "data.ways": 3,
        "train.augment": True, "train.inner_lr": 0.01}
RESUMABLE = [
    ("classical", {"train.steps": 9}),
    ("mamf", {"train.steps": 9}),
    ("mamf", {"train.schedule": "sequential", "train.epochs": 2}),
    ("fomaml", {"train.steps": 7, "train.meta_batch": 2}),
    # task samplers keep what they drew and learnt in the stream state
    *[("mamf", {"train.steps": 9, "train.sampler": s})
      for s in ("similar", "diverse", "curriculum", "confusion")],
    ("mamf", {"train.steps": 9, "train.sampler": "confusion", "train.candidates": "batch"}),
    ("mamf", {"train.schedule": "sequential", "train.epochs": 2, "train.sampler": "curriculum",
              "train.sampler_tau": 0.01}),
    ("fomaml", {"train.steps": 7, "train.meta_batch": 2, "train.sampler": "confusion"}),
]


class Interrupt(Exception):
    pass


def _weights(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("method, extra", RESUMABLE)
def test_every_method_resumes_to_the_same_weights_through_the_one_loop(
        shared_colour_folder, tmp_path, monkeypatch, method, extra):
    """Interrupted after a checkpoint at step 4, training resumes from the checkpoint's stream
    state (generator, task sampler, position in an epoch or task) to identical weights."""
    over = {**BASE, **extra, "train.method": method, "data.root": str(shared_colour_folder)}
    config = build_config(overrides=over)
    model, dataset, inputs = prepare(config, fresh=True)
    whole = train(model, inputs, dataset, config, progress=False)
    expected = _weights(model)

    kind = methods.method_class(method)
    original = kind.step

    def interrupted(self, i):
        if i == 5:
            raise Interrupt
        return original(self, i)

    checkpoints = Checkpointer(tmp_path / "checkpoints", every=2)
    model, dataset, inputs = prepare(config, fresh=True)
    monkeypatch.setattr(kind, "step", interrupted)
    with pytest.raises(Interrupt):
        train(model, inputs, dataset, config, progress=False, checkpointer=checkpoints)
    monkeypatch.setattr(kind, "step", original)
    model, dataset, inputs = prepare(config, fresh=True)  # a fresh process, as after a kill
    resumed = train(model, inputs, dataset, config, progress=False, checkpointer=checkpoints)
    assert resumed.losses == whole.losses
    assert all(torch.equal(a, b) for a, b in zip(expected, model.parameters()))


def test_a_checkpoint_past_the_runs_last_step_is_refused(shared_colour_folder, tmp_path):
    over = {**BASE, "train.method": "classical", "train.steps": 4,
            "data.root": str(shared_colour_folder)}
    config = build_config(overrides=over)
    model, dataset, inputs = prepare(config, fresh=True)
    checkpoints = Checkpointer(tmp_path / "checkpoints", every=2)
    train(model, inputs, dataset, config, progress=False, checkpointer=checkpoints)
    config = build_config(overrides={**over, "train.steps": 2})
    with pytest.raises(MamfError, match="past the 2 steps of this run"):
        train(model, inputs, dataset, config, progress=False, checkpointer=checkpoints)


class HalfRateClassical(Classical):
    """A plug-in defined outside the package: classical fine-tuning with a lower learning rate."""

    name = "test-plugin"
    presentation = Presentation(label="plug-in", description="a method registered by a test")

    def begin(self, model, inputs, pool, rng, sampler, parallel=None):
        super().begin(model, inputs, pool, rng, sampler, parallel)
        for group in self.optimizer.param_groups:
            group["lr"] *= 0.5


@pytest.fixture
def plugin():
    methods.register(HalfRateClassical)
    yield HalfRateClassical
    unregister(HalfRateClassical.name)


def test_a_new_method_is_one_class_and_runs_everywhere(tmp_path, colour_folder, capsys, plugin):
    assert "test-plugin" in methods.names(trained=True)
    build_config(overrides={"train.method": "test-plugin"})  # configs accept it
    assert main(["methods"]) == 0
    listing = capsys.readouterr().out
    for name in (*methods.names(), *samplers.names()):
        assert name in listing
    path = tmp_path / "exp.yaml"
    path.write_text(f"""
name: plug
model: tiny-random-clip
methods: [classical, test-plugin]
seeds: [1]
settings: {{train: {{lr: 1.0e-3, steps: 4, augment: false}}, metatest: {{epochs: 1}}}}
datasets: {{colours: {{root: {colour_folder}, ways: [2, 3]}}}}
""")
    rows = run_experiment(load_experiment(path), tmp_path / "out", progress=False)
    plug = [r for r in rows if r.method == "test-plugin"]
    assert [r.ways for r in plug] == [2, 3]  # trained once, like its parent class


def test_unknown_methods_and_samplers_are_refused_by_name():
    with pytest.raises(MamfError, match="train.method must be one of"):
        build_config(overrides={"train.method": "maml++"})
    with pytest.raises(MamfError, match="train.sampler must be one of"):
        build_config(overrides={"train.sampler": "nope"})


def test_no_module_outside_methods_branches_on_a_method_name():
    """Behaviour hangs on the registry, never on comparing a method's name. (The report's
    claims are statements about the paper's named methods, so report/claims.py may name them.)"""
    root = pathlib.Path(methods.__file__).parent.parent
    names = "|".join(map(re.escape, methods.names()))
    branch = re.compile(rf"""(==|!=|\bin\b)\s*\(?\s*["']({names})["']|["']({names})["']\s*(==|!=)""")
    offenders = []
    for path in root.rglob("*.py"):
        if "methods" in path.relative_to(root).parts or \
                path.relative_to(root).as_posix() == "report/claims.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            # the coop protocol shares its name with the coop method: a protocol test is not
            # a method test
            if branch.search(line) and "protocol" not in line:
                offenders.append(f"{path.relative_to(root)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def _protocol_names_in(node: ast.AST) -> list[str]:
    """The protocol names a literal spells: a string, or the strings of a tuple, list or set."""
    parts = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    return [p.value for p in parts if isinstance(p, ast.Constant) and p.value in protocols.names()]


def test_no_module_outside_protocols_branches_on_a_protocol_name():
    """What differs between protocols is asked of the protocol (`mamf.protocols`: `all_way`,
    `pools_tasks`, `pool`, `test_tasks`, ...), never decided by its name, so a new protocol is one
    file: outside the package no comparison of a protocol with a name, and no hand-written list
    of protocol names. (A default protocol, and `ways: paper` the sweep, are names, not branches.)"""
    root = pathlib.Path(methods.__file__).parent.parent
    offenders = []
    for path in root.rglob("*.py"):
        if "protocols" in path.relative_to(root).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
                hit = "protocol" in ast.unparse(node) and any(map(_protocol_names_in, operands))
            else:
                hit = len(_protocol_names_in(node)) > 1
            if hit:
                offenders.append(f"{path.relative_to(root)}:{node.lineno}: {ast.unparse(node)}")
    assert not offenders, "\n".join(offenders)


def _imports(root: pathlib.Path) -> dict[str, set[str]]:
    """mamf's modules and the mamf modules each imports (at the top or inside a function;
    not under TYPE_CHECKING, which never runs)."""
    files = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text())
        hidden = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                  and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
        out = set()
        for node in ast.walk(tree):
            if id(node) in hidden:
                continue
            if isinstance(node, ast.Import):
                out |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                subs = {f"{node.module}.{a.name}" for a in node.names} & set(files)
                out |= subs or {node.module}
        graph[name] = {m for m in out if m in files and m != name}
    return graph


def test_no_import_cycle():
    """Modules import downwards only: a plug-in imports its registry, never the other way, and
    nothing below calls back up (a cycle held together by a lazy import is still a cycle)."""
    graph = _imports(pathlib.Path(methods.__file__).parent.parent)
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            assert state.get(n) != 1, " -> ".join([*path[path.index(n):], n])
            if n not in state:
                visit(n, [*path, n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_every_method_has_its_own_colour():
    # two methods drawn in one colour cannot be told apart in a figure's bars
    from mamf import methods

    colours = [methods.method_class(m).presentation.colour for m in methods.names()]
    assert len(set(colours)) == len(colours)
