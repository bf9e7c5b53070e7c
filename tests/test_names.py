"""Names that mean one thing each (docs/architecture.md, "Names"): a name retired because it meant
a second thing stays retired, and the glossary gives each word its one meaning."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "mamf"

# retired identifier -> the name of what it meant (whole words in any source file or doc)
RETIRED = {
    "paper_image_split": "data.splits.per_class_split",
    "paper_min_images": "data.splits.least_images_per_class",
    "paper_task": "tasks.task.halved_task",
    "cell_key": "results.measured_key",
    "grid_cell": "runs.experiment.planned_grid_key",
    "BASELINE": "tasks.DEFAULT_SAMPLER (the uniform sampler is no baseline)",
    r"mamf\.settings": "mamf.catalogue (the Setting type lives there)",
    r"sampler\.plan": "TaskSampler.set_total_draws",
    r"eta\.plan": "Eta.add_todo",
    r"samplers\.DEFAULT": "tasks.DEFAULT_SAMPLER",
    r"presentation\.summary": "Presentation.description",
}
WORDS = ("baseline", "paper", "setting", "summary", "cell", "pooled", "fewshot", "adapter", "plan",
         "extend")


def texts():
    for path in [*SRC.rglob("*.py"), *(ROOT / "tests").glob("*.py"), *(ROOT / "bench").glob("*.py"),
                 *(ROOT / "docs").glob("*.md"), ROOT / "README.md"]:
        if path.name != Path(__file__).name:
            yield path, path.read_text(encoding="utf-8")


def test_retired_names_stay_retired():
    found = [f"{path.relative_to(ROOT)}: {old} (now {new})"
             for path, text in texts() for old, new in RETIRED.items()
             if re.search(rf"\b{old}\b(?!_)", text)]
    assert not found, "retired names came back:\n" + "\n".join(found)


def test_no_module_is_named_settings():
    assert not (SRC / "settings.py").exists() and not (SRC / "settings").exists()


def test_samplers_and_the_estimate_keep_plan_and_summary_for_their_one_meaning():
    from mamf.methods.presentation import BUILTIN, Presentation
    from mamf.system.progress import Eta
    from mamf.tasks import samplers

    assert "summary" not in Presentation.__dataclass_fields__
    assert all(p.description for p in BUILTIN.values())
    for cls in samplers.REGISTRY.values():
        assert not hasattr(cls, "plan") and not hasattr(cls, "summary"), cls.name
        assert isinstance(cls.description, str) and cls.description, cls.name
    assert not hasattr(Eta, "plan")
    assert not hasattr(samplers, "DEFAULT")
    from mamf.data import coop_layouts

    assert not hasattr(coop_layouts, "fewshot")


def test_the_glossary_gives_each_word_one_row():
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("\n## Names\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1].strip() for line in section.splitlines()
            if line.startswith("| ") and not line.startswith("| word")]
    assert sorted(rows) == sorted(WORDS)
