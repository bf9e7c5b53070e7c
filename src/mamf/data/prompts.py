"""Class prompts: a template with `{label}`, or a `label_to_text.json` beside the data; or an
ensemble of templates (`data.templates`: a list, or the name of a shipped set such as
`imagenet`, CLIP's 80 ImageNet templates), whose class embedding is the mean of the normalised
embeddings of the class's prompts."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import string
from pathlib import Path

from mamf.data.folder import printable
from mamf.system.errors import MamfError, shown

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "A photo of a {label}."
LABEL_TO_TEXT = "label_to_text.json"
MAX_TEMPLATES = 1000  # an ensemble's bound: each template costs one text pass over every class


TEMPLATE_SETS = Path(__file__).parent / "templates"  # <name>.txt: one template a line, {} or {label}


def template_set_names() -> list[str]:
    return sorted(p.stem for p in TEMPLATE_SETS.glob("*.txt"))


def resolve_templates(templates: list[str] | None) -> list[str] | None:
    """The templates of `data.templates`, `{}` read as `{label}`; a list of one name (no braces)
    is a shipped set. None or empty: no ensemble."""
    if not templates:
        return None
    if len(templates) == 1 and "{" not in templates[0]:
        name = templates[0].strip()
        if name not in template_set_names():
            raise MamfError(f"unknown template set {shown(name)}: use a list of templates with "
                            f"{{label}} or one of {', '.join(template_set_names())}")
        templates = (TEMPLATE_SETS / f"{name}.txt").read_text(encoding="utf-8").splitlines()
    out = [t.replace("{}", "{label}") for t in templates if t.strip()]
    if len(out) > MAX_TEMPLATES:
        raise MamfError(f"data.templates holds {len(out)} templates; at most {MAX_TEMPLATES} "
                        "(every class is embedded under each one)")
    for t in out:
        _from_template(t, ["x"])  # refuses a malformed template, naming it
    return out


def templates_tag(templates: list[str] | None) -> str | None:
    """How rows name an ensemble: the set's name, else its count and a short hash."""
    if not templates:
        return None
    if len(templates) == 1 and "{" not in templates[0]:
        return templates[0].strip()
    resolved = resolve_templates(templates) or []
    digest = hashlib.sha256("\n".join(resolved).encode()).hexdigest()[:8]
    return f"{len(resolved)} templates #{digest}"


def prompt_file(root: Path, top: Path | None = None) -> Path | None:
    """The `label_to_text.json` that gives the data's prompts (the folder's own, else the nested
    layout's top folder's), or None where the template does."""
    for candidate in [Path(root) / LABEL_TO_TEXT] + ([Path(top) / LABEL_TO_TEXT] if top else []):
        if candidate.is_file():
            return candidate
    return None


def ensemble_prompts(root: Path, classes, templates: list[str], top: Path | None = None):
    """Per class, its prompt under every template; None where a `label_to_text.json` gives the
    prompts (it wins, as over a single template)."""
    found = prompt_file(root, top)
    if found is not None:
        log.info("prompts from %s: data.templates is not used", found)
        return None
    per_template = [_from_template(t, classes) for t in templates]
    log.info("prompts: an ensemble of %d templates, e.g. %s", len(templates),
             shown(per_template[0][0]))
    return [list(group) for group in zip(*per_template)]


def label_text(label: str) -> str:
    """Folder names use underscores for spaces."""
    return printable(label).replace("_", " ")


def class_prompts(root: Path, classes: tuple[str, ...] | list[str],
                  template: str = DEFAULT_TEMPLATE, top: Path | None = None) -> list[str]:
    """One prompt per class; a `label_to_text.json` in `root` wins over the template.

    `top`: the folder holding `root` as one subdataset of the nested layout; its
    `label_to_text.json` serves every subdataset. A plain dataset's parent folder is never read:
    a file there belongs to something else.
    """
    found = prompt_file(root, top)
    if found is not None:
        log.info("prompts from %s", found)
        return _from_json(found, classes)
    prompts = _from_template(template, classes)
    log.info("prompts from the template %s, e.g. %s", shown(template), shown(prompts[0]))
    return prompts


def _from_template(template: str, classes) -> list[str]:
    """The template's prompt for each class. Only `{label}` is a field, with an optional format
    spec (`{label:>10}`): attribute or index access (`{label.__class__}`) and conversions would
    turn every label into the same text; two classes given the same prompt are refused."""
    def malformed(reason) -> MamfError:
        return MamfError(f"prompt template {shown(template)} is malformed ({reason}); "
                         "use {label} and double any other braces")

    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template)
                  if name is not None]
    except ValueError as e:
        raise malformed(e) from None
    other = [name for name, _, _ in fields if name != "label"]
    if other:
        raise malformed(f"the field {{{other[0]}}}: only {{label}} is a field, with no "
                        "attribute or index access")
    if not fields:
        raise MamfError(f"prompt template {shown(template)} has no {{label}} placeholder")
    conv = next((conv for _, _, conv in fields if conv), None)
    if conv:
        raise malformed(f"the conversion !{conv}: use {{label}} or {{label:spec}}")
    if any("{" in (spec or "") for _, spec, _ in fields):
        raise malformed("a field inside a format spec")
    if any(re.search(r"\d{4,}", spec or "") for _, spec, _ in fields):
        raise malformed("a field width of thousands of characters")
    try:
        prompts = [template.format(label=label_text(c)) for c in classes]
    except (KeyError, IndexError, ValueError, AttributeError, TypeError) as e:
        raise malformed(f"{type(e).__name__}: {e}") from None
    refuse_shared(classes, prompts, prompts, f"prompt template {shown(template)}")
    return prompts


def refuse_shared(classes, keys, prompts, source: str, how: str = "the same prompt") -> None:
    """One error line where two classes' `keys` (their prompts, or their tokenised prompts)
    are equal: zero-shot, and any method that reads the prompts, could not tell them apart."""
    first: dict = {}
    for c, key, p in zip(classes, keys, prompts):
        if key in first:
            raise MamfError(f"{source} gives the classes {shown(first[key])} and {shown(c)} "
                            f"{how} {shown(p)}: zero-shot could not tell them apart")
        first[key] = c


def token_rows(tokens: dict) -> list[tuple[int, ...]]:
    """Each text's token ids without its padding."""
    ids = tokens["input_ids"].cpu().tolist()
    mask = tokens["attention_mask"].cpu().tolist() if "attention_mask" in tokens else None
    return [tuple(t for t, m in zip(row, mask[i]) if m) if mask else tuple(row)
            for i, row in enumerate(ids)]


def cut_short(model, texts: list[str]) -> list[bool]:
    """Which texts the model's tokenizer cuts at its length: words added at the end change
    nothing. (A text that fills the length exactly reads as cut too.)"""
    rows = token_rows(model.tokenize([*texts, *(f"{t} and more" for t in texts)]))
    return [a == b for a, b in zip(rows[:len(texts)], rows[len(texts):])]


def refuse_shared_tokens(tokens: dict, classes, prompts, per_class: int = 1) -> None:
    """Two classes whose prompts the model's tokenizer makes one token sequence are refused,
    whatever gave the prompts: a tokenizer may normalise two spellings (NFC and NFD "café",
    case, accents) to one, map unknown words to one token, or cut long prompts at its length.
    `tokens`: the tokenizer's output for every class's `per_class` prompts, class by class."""
    rows = token_rows(tokens)
    groups = [tuple(rows[k * per_class:(k + 1) * per_class]) for k in range(len(classes))]
    refuse_shared(classes, groups, prompts, "this model's tokenizer",
                  "one tokenised prompt for their prompts, e.g.")


def _from_json(path: Path, classes) -> list[str]:
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MamfError(f"{path} is not valid JSON: {e}") from None
    except RecursionError:
        raise MamfError(f"{path} is not valid JSON: it nests too deeply") from None
    if not isinstance(mapping, dict):
        raise MamfError(f"{path} must be a JSON object mapping label to prompt text")
    missing = [c for c in classes if c not in mapping]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise MamfError(f"{path} has no prompt for label(s) {', '.join(map(shown, missing[:3]))}"
                        f"{more}")
    bad = [c for c in classes if not isinstance(mapping[c], str) or not mapping[c].strip()]
    if bad:
        raise MamfError(f"{path}: the prompt for {shown(bad[0])} is not a non-empty string")
    prompts = [mapping[c] for c in classes]
    refuse_shared(classes, prompts, prompts, str(path))
    return prompts
