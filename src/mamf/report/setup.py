"""The report's "Setup" block: per method, what was trained and how (model, trainable
parameters, steps, images, learning rates, epochs, templates, seeds), from the rows and the
settings written beside them (`mamf.report.files`), so a paper's appendix can state them."""

from __future__ import annotations

from pathlib import Path

from mamf.report.common import in_order, label, md, numbers
from mamf.report.export import Grid
from mamf.report.files import grid_config, row_config
from mamf.results import Row

COLUMNS = ("method", "model", "trainable parameters", "training steps", "training images",
           "lr (train / test)", "epochs (train / test)", "prompts", "seeds")


def _span(values: list) -> str:
    present = sorted({v for v in values if v is not None})
    if not present:
        return "–"
    show = [f"{v:,}" if isinstance(v, int) else str(v) for v in present]
    return show[0] if len(show) == 1 else f"{show[0]} to {show[-1]}"


def _setting(configs: list[dict], dotted: str | None) -> list:
    """A setting's values in these configs (none for a method that has no such setting)."""
    if dotted is None:
        return []
    section, key = dotted.split(".", 1)
    return [c.get(section, {}).get(key) for c in configs if isinstance(c.get(section), dict)]


def _declared(method: str) -> tuple[str | None, str | None, str | None]:
    """The settings that are `method`'s training rate, test-time rate and epochs, as it declares
    them; a method no longer registered is read as the default (`metatest.lr`, ...)."""
    from mamf.methods.presentation import Presentation, of

    shown = of(method) or Presentation(label=method, description="")
    return shown.train_rate, shown.adapt_rate, shown.adapt_epochs


def _templates(pairs: list[tuple[Row, dict | None]]) -> str:
    """What gave the prompts of these (row, config) pairs: the data's label_to_text.json, an
    ensemble, or the template. Rows from before rows said so (no `prompts` field) cannot tell
    the file from the template."""
    from mamf.data.coop_layouts import PROMPTS_TAG as COOP
    from mamf.data.prompts import LABEL_TO_TEXT

    sources = {r.prompts for r, _ in pairs}
    parts = [f"the data's {LABEL_TO_TEXT}"] if LABEL_TO_TEXT in sources else []
    if COOP in sources:  # a folder of CoOp's DATASETS.md: its own template (the row names it)
        parts.append("CoOp's template per dataset (" + "; ".join(sorted(
            {r.template for r, _ in pairs if r.prompts == COOP})) + ")")
    rest = [(r, c) for r, c in pairs if r.prompts not in (LABEL_TO_TEXT, COOP)]
    if rest:
        named = _configured([r for r, _ in rest], [c for _, c in rest if c is not None])
        parts.append(f"{named} or {LABEL_TO_TEXT} (not recorded)" if None in sources else named)
    return ", ".join(parts)


def _configured(rows: list[Row], configs: list[dict]) -> str:
    """The ensemble or template these rows' configs name."""
    tags = {r.templates for r in rows if r.templates}
    if tags:
        return ", ".join(sorted(tags))
    data = [c.get("data", {}) for c in configs if isinstance(c.get("data"), dict)]
    ensembles = {len(d["templates"]) for d in data if d.get("templates")}
    if ensembles:
        return ", ".join(f"{n} templates" for n in sorted(ensembles))
    single = {d.get("template") for d in data if d.get("template")}
    return ", ".join(sorted(single)) if single else "–"


def _config(row: Row, folder: Path | None, rebuilt: list) -> dict | None:
    config = row_config(row, folder)
    if config is None:
        config = grid_config(row, folder)
        if config is not None:
            rebuilt.append(row)
    return config


def setup_grid(rows: list[Row], folder: Path | None) -> tuple[Grid, int, int]:
    """(the table, one row per method with its rows behind its name, how many rows had no
    settings file beside them, how many of those had theirs rebuilt from the grid's
    experiment.yaml)."""
    body, behind, missing, rebuilt = [], [], 0, []
    for m in in_order({r.method for r in rows}):
        mine = [r for r in rows if r.method == m]
        pairs = [(r, _config(r, folder, rebuilt)) for r in mine]
        configs = [c for _, c in pairs if c is not None]
        missing += len(mine) - len(configs) + sum(1 for r in rebuilt if r in mine)
        trains = any(r.train_steps is not None for r in mine)
        train_rate, adapt_rate, adapt_epochs = _declared(m)
        lr = f"{_span(_setting(configs, train_rate)) if trains else '–'} / " \
             f"{_span(_setting(configs, adapt_rate))}"
        epochs = f"{_span(_setting(configs, 'train.epochs')) if trains else '–'} / " \
                 f"{_span(_setting(configs, adapt_epochs))}"
        body.append([label(m), ", ".join(sorted({r.model for r in mine})),
                     _span([r.trainable_params for r in mine]),
                     _span([r.train_steps for r in mine]),
                     _span([r.train_images for r in mine]), lr, epochs,
                     _templates(pairs), numbers(r.seed for r in mine)])
        behind.append({0: mine})
    return Grid(list(COLUMNS), body, behind), missing, len(rebuilt)


def setup_section(rows: list[Row], folder: Path | None) -> tuple[list[str], Grid]:
    """The section's markdown and its grid (for the CSV and LaTeX copies)."""
    grid, missing, rebuilt = setup_grid(rows, folder)
    head, body = grid
    lines = ["## Setup", "",
             "Per method: the trainable parameters are those training and test-time adaptation "
             "change; steps and images are the training's (– for methods that do not train, "
             "or rows that do not record them); rates and epochs are training / test-time "
             "adaptation, each the setting the method declares as its own (FOMAML's test-time "
             "rate is `metatest.inner_lr`; – where a method has none).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(md(c) for c in row) + " |" for row in body]
    if missing:
        lines += ["", f"{missing} of {len(rows)} rows have no settings file beside them "
                  "(configs/<config_id>.yaml, or their run's config.yaml)"
                  + (f"; the settings of {rebuilt} of them are rebuilt from the grid's "
                     "experiment.yaml beside the rows, taken as the file that ran (without its "
                     "data folders their settings' hash cannot be checked)" if rebuilt else "")
                  + (": the others' rates, epochs and templates are not known here."
                     if missing > rebuilt else ".")]
    if any(r.prompts is None for r in rows):
        lines += ["", "Prompts \"not recorded\": rows written before rows named their prompts' "
                  "source do not say whether a label_to_text.json beside the data (which every "
                  "builder writes, and which wins over any template) or the template shown gave "
                  "them."]
    if any(r.trainable_params is None for r in rows):
        lines += ["", "Rows written before rows recorded it carry no trainable-parameter "
                  "count."]
    return lines + [""], grid
