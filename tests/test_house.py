"""The house (docs/architecture.md): folders by layer, each importing only the layers below it,
no import cycle (imports inside functions, type-only imports and `importlib.import_module` of a
literal name all count), a top of `src/mamf` that keeps at most a dozen modules, and a report that
renders from rows without loading torch."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "mamf"

# top to bottom; a module may import its own layer and any layer below it, never one above
LAYERS = [
    ["mamf.__main__", "mamf.cli", "mamf.api"],
    ["mamf.report"],
    ["mamf.runs"],
    ["mamf.plugins"],
    ["mamf.data.builders", "mamf.data.importers"],  # a builder may score classes with a model
    ["mamf.engine"],
    ["mamf.methods"],
    ["mamf.protocols"],
    ["mamf.tasks"],
    ["mamf.features"],
    ["mamf.models"],
    ["mamf.data"],
    ["mamf.parallel"],
    ["mamf.config"],
    ["mamf.catalogue"],
    ["mamf.results", "mamf.stats"],
    ["mamf.system", "mamf"],  # the package itself: its version, and the API's names by string
]


def module_name(path: Path) -> str:
    parts = ["mamf", *path.relative_to(SRC).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in SRC.rglob("*.py")}


def imports(path: Path) -> set[str]:
    """Every mamf module `path` imports, wherever the import stands."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from mamf.methods import presentation`: the submodule, not the package's API
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES
                     else node.module for a in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module" \
                and node.args and isinstance(node.args[0], ast.Constant):
            names = [node.args[0].value]
        out |= {n for n in names if n in MODULES}
    return out - {module_name(path)}


GRAPH = {name: imports(path) for name, path in MODULES.items()}


def layer(module: str) -> int:
    best = None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            inside = module == p or (p != "mamf" and module.startswith(p + "."))
            if inside and (best is None or len(p) > best[1]):
                best = (i, len(p))
    assert best is not None, f"{module} is in no layer of the house"
    return best[0]


def test_no_module_imports_a_layer_above_its_own():
    upward = sorted(f"{a} -> {b}" for a, bs in GRAPH.items() for b in bs if layer(b) < layer(a))
    assert not upward, "imports that run back up:\n" + "\n".join(upward)


def test_there_is_no_import_cycle():
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_top_of_the_package_keeps_at_most_a_dozen_modules():
    top = sorted(p.name for p in SRC.glob("*.py"))
    assert len(top) <= 12, top


def test_the_graph_sees_lazy_and_type_only_imports():
    """The checks above would pass vacuously if the walk missed imports inside functions or
    under TYPE_CHECKING: it finds both where they are known to stand."""
    assert "mamf.runs.experiment_file" in GRAPH["mamf.report.files"]  # inside a function
    assert "mamf.features.inputs" in GRAPH["mamf.methods.base"]  # under TYPE_CHECKING too
    assert "mamf.methods.builtin" in GRAPH["mamf.methods"]  # importlib.import_module


@pytest.mark.slow
def test_a_report_renders_from_rows_and_their_settings_without_loading_torch(tmp_path):
    # a study whose rows have their settings beside them (configs/) and its experiment file,
    # which the declared hypotheses and shortcut strengths read (older grids, without configs/,
    # rebuild their settings from the file through the plug-ins)
    rows = Path(__file__).resolve().parents[1] / "docs" / "results" / "zeroshot-levels-declared"
    shutil.copytree(rows, tmp_path / "study")  # rendered where it lies, as `mamf report` does
    assert (tmp_path / "study" / "experiment.yaml").is_file()
    rows, tmp_path = tmp_path / "study", tmp_path / "study"
    code = (
        "import sys\n"
        "import mamf.report\n"
        "from mamf.report import write_report\n"
        "from mamf.results import read_rows\n"
        f"rows = read_rows({str(rows / 'results.jsonl')!r})\n"
        f"write_report(rows, __import__('pathlib').Path({str(tmp_path)!r}), 'study')\n"
        "assert 'torch' not in sys.modules, 'torch was loaded'\n"
        "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]
    assert (tmp_path / "report.md").is_file()


def test_the_readmes_experiment_file_example_is_a_valid_experiment(tmp_path):
    """The door's example of an experiment file (a folder named by `root:`, a builder, declared
    hypotheses) is one mamf reads as written."""
    import re

    from mamf.runs.experiment import parse_experiment

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    example = re.search(r"```yaml\n(.*?)```", readme, re.S)
    assert example, "README's Quick start shows an experiment file"
    (tmp_path / "data" / "birds").mkdir(parents=True)
    (tmp_path / "study.yaml").write_text(example.group(1))
    exp = parse_experiment(__import__("yaml").safe_load(example.group(1)),
                           source=tmp_path / "study.yaml")
    assert {d.name for d in exp.datasets} == {"birds", "counting"}
    assert exp.hypotheses
