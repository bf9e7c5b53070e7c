"""Class prompts: a template with `{label}`, or a `label_to_text.json` beside the data."""

from __future__ import annotations

import json
from pathlib import Path

from mamf.errors import MamfError

DEFAULT_TEMPLATE = "A photo of a {label}."
LABEL_TO_TEXT = "label_to_text.json"


def label_text(label: str) -> str:
    """Folder names use underscores for spaces."""
    return label.replace("_", " ")


def class_prompts(root: Path, classes: tuple[str, ...] | list[str],
                  template: str = DEFAULT_TEMPLATE) -> list[str]:
    """One prompt per class; `label_to_text.json` in `root` or its parent wins over the template."""
    root = Path(root)
    for candidate in (root / LABEL_TO_TEXT, root.parent / LABEL_TO_TEXT):
        if candidate.is_file():
            return _from_json(candidate, classes)
    if "{label}" not in template:
        raise MamfError(f"prompt template {template!r} has no {{label}} placeholder")
    try:
        return [template.format(label=label_text(c)) for c in classes]
    except (KeyError, IndexError, ValueError) as e:
        raise MamfError(f"prompt template {template!r} is malformed ({e}); "
                        "use {label} and double any other braces") from None


def _from_json(path: Path, classes) -> list[str]:
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MamfError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(mapping, dict):
        raise MamfError(f"{path} must be a JSON object mapping label to prompt text")
    missing = [c for c in classes if c not in mapping]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise MamfError(f"{path} has no prompt for label(s) {', '.join(map(repr, missing[:3]))}"
                        f"{more}")
    bad = [c for c in classes if not isinstance(mapping[c], str) or not mapping[c].strip()]
    if bad:
        raise MamfError(f"{path}: the prompt for {bad[0]!r} is not a non-empty string")
    return [mapping[c] for c in classes]
