"""Emoji from the npm packages `emoji-datasource-google` and `emoji-datasource-twitter` (16.0.0).

One class per emoji that has a 64x64 image in both sets; each class folder holds `google.png` and
`twitter.png`, flattened onto white as RGB. The apple and facebook sets are never used: they are not
licensed for redistribution. With `openmoji=True` a third style joins: npm `openmoji` (17.0.0,
CC BY-SA 4.0, colour SVG) rasterised by resvg to `openmoji.png`, and only emoji drawn in all three
sets are kept; it is meant as an unseen style for queries (`data.query_match: openmoji`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image

from mamf.data.builders.common import (
    BuiltDataset,
    Log,
    build_with,
    check_folder,
    check_int,
    resolve_out,
    unique_slugs,
)
from mamf.data.cache import cache_root
from mamf.system.errors import MamfError

NAME = "emoji"
VERSION = 1
NPM_VERSION = "16.0.0"
SETS = {"google": "emoji-datasource-google", "twitter": "emoji-datasource-twitter"}
SLUG_SUBSTITUTIONS = {"&": " and ", "*": " asterisk ", "#": " number sign ", "’": "", "'": ""}
OPENMOJI = ("openmoji", "17.0.0")
SKIPPED_CATEGORIES = ("Component",)  # skin-tone swatches and hair-style components, not emoji


def prompt(name: str) -> str:
    return f"An emoji of {name}."


# --------------------------------------------------------------------------- download and unpack

def npm_pack(package: str, version: str, cache_dir: Path, log: Log) -> Path:
    """`npm pack package@version` into `cache_dir` (reused when already there); the .tgz path."""
    target = cache_dir / f"{package}-{version}.tgz"
    if target.is_file() and target.stat().st_size > 0:
        log(f"{NAME}: using cached {target}")
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise MamfError(f"the emoji builder needs npm to fetch {package}@{version}: install Node.js "
                        "and npm (e.g. `apt-get install npm`), or put the .tgz from "
                        f"`npm pack {package}@{version}` in {cache_dir}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    log(f"{NAME}: downloading {package}@{version} with npm pack into {cache_dir}")
    with tempfile.TemporaryDirectory(prefix=".npm-pack-", dir=cache_dir) as tmp:
        try:
            proc = subprocess.run([npm, "pack", f"{package}@{version}"], cwd=tmp, capture_output=True,
                                  text=True, timeout=900)
        except subprocess.TimeoutExpired:
            raise MamfError(f"`npm pack {package}@{version}` took over 15 minutes; "
                            "check access to the npm registry") from None
        packed = sorted(Path(tmp).glob("*.tgz"))
        if proc.returncode != 0 or len(packed) != 1:
            lines = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()
            errors = [ln for ln in lines if "ERR" in ln] or lines
            raise MamfError(f"`npm pack {package}@{version}` failed ({errors[-1].strip()}); "
                            "check access to the npm registry")
        os.replace(packed[0], target)
    return target


def _safe_member(member: tarfile.TarInfo, archive: Path) -> None:
    path = PurePosixPath(member.name)
    if member.name.startswith(("/", "\\")) or path.is_absolute() or ".." in path.parts:
        raise MamfError(f"{archive} has an unsafe member {member.name!r}; refusing to unpack it "
                        "(delete the file and run again)")


def _read_tar(archive: Path, keep) -> dict[str, bytes]:
    """The regular files of an npm .tgz whose member name `keep(name)` accepts, read safely."""
    out = {}
    try:
        with tarfile.open(archive, "r|gz") as tar:
            for member in tar:
                _safe_member(member, archive)
                if member.isfile() and keep(member.name):
                    out[member.name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise MamfError(f"{archive} is not a readable npm package ({e}); delete it and run again") from None
    return out


def read_package(archive: Path, image_set: str) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """The package's top-level files and its `img/<set>/64/*.png`, read safely into memory."""
    top_files = {"emoji.json", "LICENSE", "README.md", "package.json"}
    prefix = f"package/img/{image_set}/64/"

    def keep(name: str) -> bool:
        return (name.startswith("package/") and name[len("package/"):] in top_files) or \
            (name.startswith(prefix) and name.endswith(".png") and "/" not in name[len(prefix):])

    files = _read_tar(archive, keep)
    meta = {k[len("package/"):]: v for k, v in files.items() if not k.startswith(prefix)}
    images = {k[len(prefix):]: v for k, v in files.items() if k.startswith(prefix)}
    if "emoji.json" not in meta or not images:
        raise MamfError(f"{archive} has no package/emoji.json or no {prefix} images; is it "
                        f"{SETS[image_set]}@{NPM_VERSION}?")
    return meta, images


def codepoints(hexcode: str) -> str:
    """A sequence's code points without variation selector 16, so emoji-data's `unified` and
    OpenMoji's `hexcode` name one emoji alike ('2764-FE0F' and '2764')."""
    return "-".join(p for p in hexcode.upper().split("-") if p != "FE0F")


def read_openmoji(archive: Path) -> dict[str, bytes]:
    """OpenMoji's colour SVGs (`package/color/svg/<hexcode>.svg`), keyed by `codepoints`."""
    prefix = "package/color/svg/"
    files = _read_tar(archive, lambda n: n.startswith(prefix) and n.endswith(".svg")
                      and "/" not in n[len(prefix):])
    if not files:
        raise MamfError(f"{archive} has no {prefix}*.svg; is it {OPENMOJI[0]}@{OPENMOJI[1]}?")
    return {codepoints(k[len(prefix):-len(".svg")]): v for k, v in files.items()}


def rasterise(svg: bytes, size: int = 64) -> Image.Image:
    """An SVG drawn by resvg (PyPI `resvg-py`, a self-contained wheel) at size x size, on white."""
    try:
        import resvg_py
    except ImportError:
        raise MamfError("the emoji builder's openmoji option needs the SVG rasteriser resvg-py: "
                        "pip install resvg-py (or mamf's offline extra)") from None
    try:
        png = resvg_py.svg_to_bytes(svg_string=svg.decode("utf-8"), width=size, height=size)
    except (ValueError, UnicodeDecodeError) as e:
        raise MamfError(f"an OpenMoji SVG could not be drawn ({e})") from None
    return _flatten(bytes(png))


# --------------------------------------------------------------------------- classes

@dataclass
class _Emoji:
    name: str
    short_name: str
    unified: str
    image: str
    category: str
    subcategory: str
    sort_order: int
    added_in: tuple[int, ...]


def _version(text) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in str(text).split("."))
    except ValueError:
        return (999,)


def _flatten(png: bytes) -> Image.Image:
    """RGB on a white background (the PNGs have alpha or a transparent palette entry)."""
    with Image.open(io.BytesIO(png)) as im:
        rgba = im.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _display_names(entries: list[_Emoji]) -> list[str]:
    """Lower-cased emoji names; where two share one (e.g. 'man in tuxedo' for U+1F935 and its
    gendered form), the one whose short name differs uses that short name instead."""
    names = [e.name.lower().replace("’", "'") for e in entries]
    taken = set(names)
    counts = {n: names.count(n) for n in names}
    out = []
    for e, n in zip(entries, names):
        alt = e.short_name.replace("_", " ").replace("-", " ").lower()
        if counts[n] > 1 and alt != n and alt not in taken:
            taken.add(alt)
            n = alt
        out.append(n)
    return out


def _duplicate_groups(keys: dict[str, list[str]]) -> dict[str, str]:
    """Union-find over 'same image in some set': unified -> representative unified."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for members in keys.values():
        for other in members[1:]:
            parent[find(other)] = find(members[0])
    return {x: find(x) for x in list(parent)}


def build_emoji(out: str | os.PathLike, *, log: Log = print, limit: int | None = None,
                drop_duplicates: bool = True, cache_dir: str | os.PathLike | None = None,
                openmoji: bool = False) -> Path:
    """Build the emoji dataset: `<out>/<slug>/{google,twitter}.png` plus `classes.json`.

    `limit`: keep only the first N classes in sorted folder order (for tests). `drop_duplicates`:
    of emoji whose images are pixel-identical in either set (flags of the same design, family
    variants Twemoji draws alike), keep only the oldest (`added_in`, then sort order), so no two
    classes share an image. `cache_dir`: where the npm .tgz files are kept (default
    `downloads/` in mamf's cache folder: nothing is written outside `out` but the cache).
    """
    check_int(NAME, "limit", limit, allow_none=True)
    check_folder(NAME, "cache_dir", cache_dir)
    root = resolve_out(out)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else \
        cache_root() / "downloads"
    if not isinstance(openmoji, bool):
        raise MamfError(f"{NAME}: openmoji must be true or false, not {openmoji!r}")
    options = {"limit": limit, "drop_duplicates": bool(drop_duplicates)}
    if openmoji:  # only when asked, so builds made before the option existed stay valid
        options["openmoji"] = True

    def make(tmp: Path) -> BuiltDataset:
        # the two downloads wait on the network, not the CPU: side by side they take one's time
        with ThreadPoolExecutor(len(SETS)) as pool:
            archives = dict(zip(SETS, pool.map(lambda p: npm_pack(p, NPM_VERSION, cache, log),
                                               SETS.values())))
        packages = {s: read_package(archives[s], s) for s in SETS}
        g_meta, g_images = packages["google"]
        t_meta, t_images = packages["twitter"]
        try:
            listing = json.loads(g_meta["emoji.json"])
            t_listing = json.loads(t_meta["emoji.json"])
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise MamfError(f"emoji.json in the npm package is not valid JSON: {e}") from None
        twitter_has = {e.get("unified") for e in t_listing if e.get("has_img_twitter")}
        entries, skipped = [], 0
        for e in listing:
            ok = (e.get("has_img_google") and e.get("unified") in twitter_has
                  and e.get("category") not in SKIPPED_CATEGORIES and e.get("name")
                  and e.get("image") in g_images and e.get("image") in t_images)
            if not ok:
                skipped += 1
                continue
            entries.append(_Emoji(e["name"], e.get("short_name") or "", e["unified"], e["image"],
                                  e.get("category") or "", e.get("subcategory") or "",
                                  int(e.get("sort_order") or 0), _version(e.get("added_in"))))
        entries.sort(key=lambda x: (x.sort_order, x.unified))
        log(f"{NAME}: {len(listing)} emoji listed, {len(entries)} with images in both sets "
            f"(skipped {skipped}: no image in one set or category {', '.join(SKIPPED_CATEGORIES)}); "
            "skin-tone variations are not used")
        om_archive, om_svgs = None, {}
        if openmoji:
            om_archive = npm_pack(*OPENMOJI, cache, log)
            om_svgs = read_openmoji(om_archive)
            before = len(entries)
            entries = [u for u in entries if codepoints(u.unified) in om_svgs]
            log(f"{NAME}: {len(entries)} of {before} emoji are drawn in OpenMoji too; only they are "
                "kept")

        flat = {u.unified: (_flatten(g_images[u.image]), _flatten(t_images[u.image]))
                for u in entries}
        dropped: list[str] = []
        if drop_duplicates:
            keys: dict[str, list[str]] = {}
            for u in entries:
                for k, im in enumerate(flat[u.unified]):
                    digest = hashlib.sha256(bytes([k]) + im.tobytes()).hexdigest()
                    keys.setdefault(digest, []).append(u.unified)
            rep = _duplicate_groups({k: v for k, v in keys.items() if len(v) > 1})
            first: dict[str, str] = {}
            # Keep the oldest emoji of each group (France over Clipperton Island), then by sort order.
            for u in sorted(entries, key=lambda x: (x.added_in, x.sort_order)):
                group = rep.get(u.unified)
                if group is not None and first.setdefault(group, u.unified) != u.unified:
                    dropped.append(u.unified)
            dropped_set = set(dropped)
            names_dropped = [u.name.lower() for u in entries if u.unified in dropped_set]
            entries = [u for u in entries if u.unified not in dropped_set]
            if dropped:
                log(f"{NAME}: dropped {len(dropped)} emoji whose image duplicates another's "
                    f"(e.g. {', '.join(names_dropped[:3])})")

        names = _display_names(entries)
        slugs = unique_slugs(names, substitutions=SLUG_SUBSTITUTIONS)
        order = sorted(range(len(entries)), key=lambda i: slugs[i])
        if limit is not None:
            order = order[:limit]
        log(f"{NAME}: writing {len(order)} classes (google.png and twitter.png each)")
        classes, label_to_text = {}, {}
        for i in order:
            u, slug = entries[i], slugs[i]
            folder = tmp / slug
            folder.mkdir()
            google, twitter = flat[u.unified]
            # PNG is lossless at any level: level 1 writes the same pixels several times faster
            google.save(folder / "google.png", compress_level=1)
            twitter.save(folder / "twitter.png", compress_level=1)
            if openmoji:
                rasterise(om_svgs[codepoints(u.unified)]).save(folder / "openmoji.png",
                                                               compress_level=1)
            classes[slug] = {"name": names[i], "category": u.category, "subcategory": u.subcategory,
                             "unified": u.unified, "short_name": u.short_name}
            label_to_text[slug] = prompt(names[i])
        (tmp / "classes.json").write_text(json.dumps(classes, indent=1, ensure_ascii=False,
                                                     sort_keys=True) + "\n", encoding="utf-8")
        n_sub = len({(c["category"], c["subcategory"]) for c in classes.values()})

        readme = g_meta.get("README.md", b"").decode("utf-8", "replace")
        readme_lines = [ln.strip() for ln in readme.splitlines()
                        if ln.strip().startswith("*") and "images" in ln
                        and ("Google" in ln or "Twitter" in ln)]
        digests = {s: hashlib.sha256(archives[s].read_bytes()).hexdigest() for s in SETS}
        npm = {SETS[s]: {"version": NPM_VERSION, "sha256": digests[s]} for s in SETS}
        om_lines = []
        if om_archive is not None:
            om_digest = hashlib.sha256(om_archive.read_bytes()).hexdigest()
            npm[OPENMOJI[0]] = {"version": OPENMOJI[1], "sha256": om_digest}
            om_lines = [f"- npm `{OPENMOJI[0]}@{OPENMOJI[1]}` (`npm pack`), sha256 of the .tgz "
                        f"`{om_digest}`: `package/color/svg/<hexcode>.svg`, rasterised at 64x64 "
                        "by resvg (PyPI `resvg-py`)."]
        source = "\n".join(
            [f"- npm `{SETS[s]}@{NPM_VERSION}` (`npm pack`), sha256 of the .tgz `{digests[s]}`: "
             f"`package/img/{s}/64/*.png` and `package/emoji.json`." for s in SETS] + om_lines
            + ["- Emoji names, categories and subcategories: `emoji.json` of emoji-data by Cal "
               "Henderson (https://github.com/iamcal/emoji-data)."])
        licence = "\n".join([
            "- Google images (Noto Emoji, https://github.com/googlefonts/noto-emoji): Apache License "
            "2.0 (https://www.apache.org/licenses/LICENSE-2.0).",
            "- Twitter images: Twemoji graphics Copyright Twitter, Inc and other contributors "
            "(fork https://github.com/jdecked/twemoji), licensed under CC-BY 4.0 "
            "(https://creativecommons.org/licenses/by/4.0/). Changes made here: flattened onto a "
            "white background and stored as RGB PNG.",
            "- The emoji-datasource packages and their metadata (`emoji.json`): MIT, Copyright (c) "
            "2013 Cal Henderson (the packages' LICENSE; their package.json says `MIT` for the "
            "package as a whole, while the README gives the image licences).",
            "- The package README says:",
            *[f"  > {ln}" for ln in readme_lines],
            "- The apple and facebook image sets are not used: they are not licensed for "
            "redistribution.",
        ] + ([
            "- OpenMoji images (https://openmoji.org, the `openmoji.png` files): CC BY-SA 4.0 "
            "(https://creativecommons.org/licenses/by-sa/4.0/), by the OpenMoji project and its "
            "contributors. Changes made here: the colour SVG rasterised at 64x64, flattened onto "
            "white and stored as RGB PNG. Share-alike: these adapted images, and what is shared "
            "of them, stay under CC BY-SA 4.0.",
        ] if openmoji else []))
        method = (
            "Classes are the emoji listed in `emoji.json` with a 64x64 image in both the google and "
            "the twitter set (`has_img_google`, `has_img_twitter`, and the file present), without "
            f"skin-tone variations and without the category {', '.join(SKIPPED_CATEGORIES)} "
            "(skin-tone swatches, hair components). "
            + ("Emoji whose image is pixel-identical to another's in either set (e.g. flags of the "
               "same design, family variants drawn alike) are dropped, keeping the oldest "
               f"(`added_in`, then sort order; {len(dropped)} dropped). " if drop_duplicates else "")
            + "The class name is the emoji's `name` lower-cased; where two emoji share a name, the "
            "one whose `short_name` differs from it takes that instead. The label folder is an "
            "ASCII slug of the name (with `__2`... on collisions); `classes.json` maps it to the "
            "name, category and subcategory. "
            "Each folder holds `google.png` and `twitter.png`, flattened onto white (RGB). "
            + ("With openmoji=true only emoji that OpenMoji also draws are kept (matched by code "
               "points, ignoring U+FE0F), and each folder also holds `openmoji.png`: the colour "
               "SVG rasterised by resvg at 64x64 and flattened onto white, a third style for "
               "queries never used in training (`data.train_match` on google or twitter). "
               if openmoji else "")
            + f"Prompt: \"{prompt('{name}')}\"."
            + (f" Only the first {limit} classes in folder order are kept (limit={limit})."
               if limit is not None else ""))
        return BuiltDataset(
            title="Emoji: Google (Noto) and Twitter (Twemoji) images of the same emoji"
                  + (", and OpenMoji" if openmoji else ""),
            label_to_text=label_to_text, source=source, licence=licence, method=method,
            notes=f"{len(classes)} classes in {n_sub} (category, subcategory) groups; see classes.json.",
            extra={"npm": npm},
        )

    return build_with(NAME, root, options, log, make, version=VERSION)
