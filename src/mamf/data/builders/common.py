"""What every dataset builder shares: staging, atomic finishing, DATASET.md and idempotency.

A builder describes its dataset with a `BuiltDataset` and writes its label folders into a staging
folder; `finish_build` does the rest. The finished dataset looks like

    <out>/<label>/<image files>
    <out>/label_to_text.json      label folder name -> prompt text
    <out>/DATASET.md              source, licence, how it was made, counts, rebuild command
    <out>/.mamf-dataset.json      written last: builder, options, counts (the idempotency manifest)

The staging folder is a hidden sibling of `<out>` and is renamed into place only once complete, so
an interrupted build never leaves a half dataset that looks finished.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import tempfile
import time
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mamf.system.errors import MamfError, shown
from mamf.system.io import make_folder

MANIFEST = ".mamf-dataset.json"
LABEL_TO_TEXT = "label_to_text.json"
DATASET_MD = "DATASET.md"
FORMAT = 1

Log = Callable[[str], None]


@dataclass
class BuiltDataset:
    """What a builder tells `finish_build` about the label folders it wrote."""

    title: str
    label_to_text: dict[str, str]
    source: str
    licence: str
    method: str
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    rebuild: str | None = None  # the command that remakes it; default: `python -m mamf.data.builders`


def resolve_out(out: str | os.PathLike) -> Path:
    out = Path(out).expanduser()
    if out.name in ("", ".", ".."):
        raise MamfError(f"dataset folder {str(out)!r} needs a name of its own (e.g. data/emoji)")
    return out.absolute()


def slugify(text: str, *, substitutions: dict[str, str] | None = None) -> str:
    """A readable, file-system-safe folder name: ASCII letters, digits, '-' and '_'."""
    for old, new in (substitutions or {}).items():
        text = text.replace(old, new)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    text = re.sub(r"[^a-z0-9-]+", "_", text)
    text = re.sub(r"_*-_*", "-", text)
    return text.strip("_-") or "unnamed"


def unique_slugs(names: list[str], **kw) -> list[str]:
    """`slugify` each name; later collisions get `__2`, `__3`, ... (never a plain slug)."""
    seen: set[str] = set()
    out = []
    for name in names:
        base = slugify(name, **kw)
        slug, k = base, 2
        while slug in seen:
            slug, k = f"{base}__{k}", k + 1
        seen.add(slug)
        out.append(slug)
    return out


# what a drawn dataset may ask for: larger is a typo, refused before memory is allocated
MAX_SIZE = 4096  # pixels a side
MAX_PER_CLASS = 100_000  # images a class


def check_int(builder: str, option: str, value: Any, *, minimum: int = 1,
              allow_none: bool = False, maximum: int | None = None) -> None:
    """A MamfError unless `value` is an int in [minimum, maximum] (or None when allowed); bools
    are refused."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or \
            maximum is not None and value > maximum:
        what = f"an integer of at least {minimum}" + \
            (f" and at most {maximum}" if maximum is not None else "") + \
            (" or None" if allow_none else "")
        raise MamfError(f"{builder}: {option} must be {what}, not {shown(value)}")


def check_folder(builder: str, option: str, value: Any) -> None:
    """A MamfError unless `value` is None or a folder name (a string or a path)."""
    if value is not None and not isinstance(value, (str, os.PathLike)):
        raise MamfError(f"{builder}: {option} must be a folder name, not {shown(value)}")


def read_manifest(out: Path) -> dict | None:
    """The manifest of a finished build in `out`, or None."""
    try:
        data = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _count(root: Path) -> dict[str, int]:
    """Files per visible label folder."""
    counts = {}
    with os.scandir(root) as it:
        dirs = sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
    for d in dirs:
        with os.scandir(root / d) as it:
            counts[d] = sum(1 for e in it if e.is_file() and not e.name.startswith("."))
    return counts


def is_built(out: Path, builder: str, options: dict[str, Any], version: int = 1) -> bool:
    """True when `out` holds a finished build of `builder` (this version) with these options."""
    manifest = read_manifest(out)
    if manifest is None or manifest.get("format") != FORMAT or manifest.get("builder") != builder:
        return False
    if manifest.get("builder_version") != version:
        return False
    if manifest.get("options") != json.loads(json.dumps(options)):
        return False
    try:
        return _count(out) == manifest.get("images_per_class")
    except OSError:
        return False


def rebuild_command(builder: str, out: Path, options: dict[str, Any]) -> str:
    args = [f"{k}={json.dumps(v)}" for k, v in options.items()]
    return shlex.join(["python", "-m", "mamf.data.builders", builder, str(out), *args])


def _check_replaceable(out: Path, builder: str, options: dict[str, Any] | None = None) -> None:
    """A finished build is replaced only by its own builder with its own options (an older
    builder version, or a damaged build): other options make other data, and rows measured
    on the folder (which name it, not its options) would be taken for the new data's."""
    if not out.exists():
        return
    if not out.is_dir():
        raise MamfError(f"{out} exists and is not a folder; choose another output path")
    manifest = read_manifest(out)
    if manifest is not None:
        if manifest.get("builder") != builder:
            raise MamfError(f"{out} holds the {manifest.get('builder')!r} dataset, not {builder!r}; "
                            "choose another output folder or remove it")
        before = manifest.get("options")
        if options is not None and isinstance(before, dict) and before != options:
            changed = sorted(k for k in {*before, *options} if before.get(k) != options.get(k))
            was = ", ".join(f"{k}={json.dumps(before.get(k))}" for k in changed)
            raise MamfError(f"{out} holds the {builder} dataset built with {was}: building it "
                            "with other options in place would change the data under results "
                            "already measured on it; choose another output folder or remove it")
        return
    if any(out.iterdir()):
        raise MamfError(f"{out} exists, is not empty and was not built by mamf; "
                        "choose another output folder or remove it")


@contextmanager
def staging(out: Path, builder: str, log: Log,
            options: dict[str, Any] | None = None) -> Iterator[Path]:
    """A fresh hidden sibling folder of `out`; removed again if the build fails."""
    _check_replaceable(out, builder, options)
    make_folder(out.parent)
    for stale in out.parent.glob(f".{out.name}.partial-*"):
        log(f"{builder}: removing a leftover partial build {stale}")
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _dataset_md(info: BuiltDataset, builder: str, out: Path, options: dict[str, Any],
                counts: dict[str, int]) -> str:
    n_images = sum(counts.values())
    per = sorted(set(counts.values()))
    per_text = str(per[0]) if len(per) == 1 else f"{per[0]} to {per[-1]}"
    examples = ", ".join(f"`{k}`" for k in list(counts)[:3])
    lines = [
        f"# {info.title}", "",
        f"Built by `mamf` (builder `{builder}`) on {time.strftime('%Y-%m-%d')}.", "",
        f"- Classes: {len(counts)}",
        f"- Images: {n_images} ({per_text} per class)",
        f"- Options: {', '.join(f'{k}={v!r}' for k, v in options.items()) or 'none'}", "",
        "## Source", "", info.source.strip(), "",
        "## Licence", "", info.licence.strip(), "",
        "## How it was made", "", info.method.strip(), "",
        "## Layout", "",
        f"`<label>/<image>` folders (e.g. {examples}); `{LABEL_TO_TEXT}` maps every label folder to "
        f"its prompt text; `{MANIFEST}` records the builder, options and counts and is written last.",
        "",
    ]
    if info.notes.strip():
        lines += ["## Notes", "", info.notes.strip(), ""]
    lines += ["## Rebuild", "", "```", info.rebuild or rebuild_command(builder, out, options), "```",
              ""]
    return "\n".join(lines)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False, sort_keys=True) + "\n",
                    encoding="utf-8")


def finish_build(tmp: Path, out: Path, builder: str, options: dict[str, Any],
                 info: BuiltDataset, log: Log, version: int = 1) -> Path:
    """Write label_to_text.json, DATASET.md and the manifest (last), then move `tmp` to `out`."""
    counts = _count(tmp)
    missing = sorted(set(counts) - set(info.label_to_text))
    extra = sorted(set(info.label_to_text) - set(counts))
    if missing or extra:
        raise RuntimeError(f"{builder}: label folders and prompts disagree "
                           f"(no prompt: {missing[:3]}, no folder: {extra[:3]})")
    empty = [k for k, v in counts.items() if v == 0]
    if empty:
        raise RuntimeError(f"{builder}: empty label folders {empty[:3]}")
    _write_json(tmp / LABEL_TO_TEXT, info.label_to_text)
    (tmp / DATASET_MD).write_text(_dataset_md(info, builder, out, options, counts), encoding="utf-8")
    manifest = {"format": FORMAT, "builder": builder, "builder_version": version, "options": options,
                "classes": len(counts), "images": sum(counts.values()),
                "images_per_class": counts, **info.extra}
    _write_json(tmp / MANIFEST, manifest)
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / "dataset")
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    log(f"{builder}: wrote {len(counts)} classes, {sum(counts.values())} images to {out}")
    return out


def build_with(builder: str, out: str | os.PathLike, options: dict[str, Any], log: Log,
               make: Callable[[Path], BuiltDataset], version: int = 1) -> Path:
    """Run `make(staging_folder)` unless `out` already holds this build, then finish atomically.

    `options` are the choices that change the data (they are compared for idempotency and written
    into the rebuild command); `version` is bumped when a builder's output changes for the same
    options, so that older builds are redone.
    """
    out = resolve_out(out)
    options = json.loads(json.dumps(options))
    if is_built(out, builder, options, version):
        log(f"{builder}: already built at {out}")
        return out
    start = time.perf_counter()
    with staging(out, builder, log, options) as tmp:
        log(f"{builder}: building into {out}")
        info = make(tmp)
        finish_build(tmp, out, builder, options, info, log, version)
    log(f"{builder}: done in {time.perf_counter() - start:.1f} s")
    return out
