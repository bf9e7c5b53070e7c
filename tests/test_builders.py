"""Dataset builders: layout, counts, prompts, DATASET.md, idempotency, determinism, safety."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import struct
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mamf.data.builders import BUILDERS, build, builder_options
from mamf.data.builders import emoji as emoji_mod
from mamf.data.builders import fashion_mnist as fm_mod
from mamf.data.builders.common import MANIFEST, slugify, unique_slugs
from mamf.data.folder import scan_folder
from mamf.data.prompts import class_prompts
from mamf.system.errors import MamfError


class Log(list):
    def __call__(self, line: str) -> None:
        self.append(line)


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(root.rglob("*")) if p.is_file()}


def check_layout(root: Path, n_classes: int, n_images: int) -> dict[str, str]:
    """The standard layout, usable by the folder scanner and the prompt loader."""
    scan = scan_folder(root)
    assert len(scan.classes) == n_classes
    assert sum(len(f) for f in scan.files) == n_images
    for label in scan.classes:
        assert "/" not in label and not label.startswith(".") and label.strip() == label
    mapping = json.loads((root / "label_to_text.json").read_text(encoding="utf-8"))
    assert set(mapping) == set(scan.classes)
    assert all(isinstance(v, str) and v.strip() for v in mapping.values())
    assert class_prompts(root, scan.classes) == [mapping[c] for c in scan.classes]
    text = (root / "DATASET.md").read_text(encoding="utf-8")
    for needle in ("## Source", "## Licence", "## How it was made", "## Rebuild",
                   f"Classes: {n_classes}", f"Images: {n_images}"):
        assert needle in text
    manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["classes"] == n_classes and manifest["images"] == n_images
    assert not list(root.parent.glob(f".{root.name}.partial-*"))
    return mapping


def assert_idempotent(name: str, root: Path, **options) -> None:
    before = snapshot(root)
    log = Log()
    start = time.perf_counter()
    assert BUILDERS[name](root, log=log, **options) == root
    assert time.perf_counter() - start < 2.0
    assert any("already built" in line for line in log)
    assert snapshot(root) == before


def test_registry_and_options():
    assert set(BUILDERS) == {"emoji", "emoji-levels", "counting", "fashion-mnist", "digits",
                             "spurious"}
    assert builder_options("counting") == {"per_class": 60, "size": 128, "seed": 0}
    with pytest.raises(MamfError, match="no dataset builder"):
        build("imagenet", "x")
    with pytest.raises(MamfError, match="no option 'per_klass'"):
        build("counting", "x", per_klass=3)


def test_slugs_are_path_safe_and_unique():
    assert slugify("Côte d’Ivoire Flag", substitutions={"’": ""}) == "cote_divoire_flag"
    assert slugify("keycap: *", substitutions=emoji_mod.SLUG_SUBSTITUTIONS) == "keycap_asterisk"
    assert slugify("../..") == "unnamed"
    assert slugify(".hidden name") == "hidden_name"
    assert unique_slugs(["a b", "a-b", "a_b", "a  b", "a b 2"]) == ["a_b", "a-b", "a_b__2", "a_b__3",
                                                                   "a_b_2"]


# --------------------------------------------------------------------------- counting

def test_counting_in_worker_processes_writes_the_same_bytes_as_one(tmp_path, monkeypatch):
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1}, raising=False)
    log = Log()
    two = BUILDERS["counting"](tmp_path / "two", log=log, per_class=2, size=32, seed=3)
    assert any("2 processes" in line for line in log)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0}, raising=False)
    one = BUILDERS["counting"](tmp_path / "one", log=Log(), per_class=2, size=32, seed=3)
    files = sorted(p.relative_to(one) for p in one.rglob("*.png"))
    assert len(files) == 20
    assert all((one / f).read_bytes() == (two / f).read_bytes() for f in files)


def test_counting_layout_idempotent_and_deterministic(tmp_path):
    log = Log()
    root = BUILDERS["counting"](tmp_path / "counting", log=log, per_class=3, size=48, seed=0)
    assert root == tmp_path / "counting"
    assert 2 <= len(log) <= 8
    mapping = check_layout(root, 10, 30)
    assert sorted(mapping) == [f"{n:02d}_{w}" for n, w in enumerate(
        ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"], 1)]
    assert mapping["01_one"] == "An image of one object."
    assert mapping["03_three"] == "An image of three objects."
    with Image.open(root / "10_ten" / "0002.png") as im:
        assert im.size == (48, 48) and im.mode == "RGB"
    assert_idempotent("counting", root, per_class=3, size=48, seed=0)

    same = BUILDERS["counting"](tmp_path / "same", log=Log(), per_class=3, size=48, seed=0)
    other = BUILDERS["counting"](tmp_path / "other", log=Log(), per_class=3, size=48, seed=1)
    files = sorted(p.relative_to(root) for p in root.rglob("*.png"))
    assert all((root / f).read_bytes() == (same / f).read_bytes() for f in files)
    assert sum((root / f).read_bytes() != (other / f).read_bytes() for f in files) == len(files)
    # Images of the same class differ from one another.
    assert len({(root / "05_five" / f"{i:04d}.png").read_bytes() for i in range(3)}) == 3

    # New options never rebuild in place (results measured on the folder would be taken for
    # the new data's); removed, the folder is rebuilt. Earlier images do not depend on per_class.
    with pytest.raises(MamfError, match="built with per_class=3: building it with other options"):
        BUILDERS["counting"](root, log=Log(), per_class=4, size=48, seed=0)
    check_layout(root, 10, 30)
    shutil.rmtree(root)
    log = Log()
    BUILDERS["counting"](root, log=log, per_class=4, size=48, seed=0)
    assert not any("already built" in line for line in log)
    check_layout(root, 10, 40)
    assert all((root / f).read_bytes() == (same / f).read_bytes() for f in files)


def test_counting_scenes_have_n_objects():
    """Placement gives exactly n discs, inside the canvas and not overlapping."""
    from mamf.data.builders.counting import _place, _Rng

    for n in range(1, 11):
        discs = _place(_Rng(f"t/{n}"), n, 128)
        assert len(discs) == n
        for i, (x, y, r) in enumerate(discs):
            assert r <= x <= 128 - r and r <= y <= 128 - r
            for (x2, y2, r2) in discs[i + 1:]:
                assert np.hypot(x - x2, y - y2) > r + r2


def test_interrupted_build_leaves_nothing(tmp_path):
    def failing_log(line: str) -> None:
        if "drawing" in line:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        BUILDERS["counting"](tmp_path / "c", log=failing_log, per_class=2, size=32)
    assert not (tmp_path / "c").exists()
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite_foreign_folders(tmp_path):
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"not really")
    with pytest.raises(MamfError, match="not built by mamf"):
        BUILDERS["counting"](mine, log=Log(), per_class=1, size=32)
    assert (mine / "holiday.jpg").read_bytes() == b"not really"
    digits = BUILDERS["digits"](tmp_path / "d", log=Log(), per_class=1)
    with pytest.raises(MamfError, match="holds the 'digits' dataset"):
        BUILDERS["counting"](digits, log=Log(), per_class=1, size=32)
    with pytest.raises(MamfError, match="per_class"):
        BUILDERS["counting"](tmp_path / "c", log=Log(), per_class=0)
    with pytest.raises(MamfError, match="per_class"):
        BUILDERS["digits"](tmp_path / "c", log=Log(), per_class=True)


# --------------------------------------------------------------------------- digits

def test_digits(tmp_path):
    root = BUILDERS["digits"](tmp_path / "digits", log=Log(), per_class=5)
    mapping = check_layout(root, 10, 50)
    assert sorted(mapping) == [str(d) for d in range(10)]
    assert mapping["7"] == "An image of the digit 7."
    with Image.open(next((root / "3").iterdir())) as im:
        assert im.size == (32, 32) and im.mode == "L"
        arr = np.asarray(im)
    assert arr.max() == 255 and arr.min() < 128  # white paper, dark ink
    assert_idempotent("digits", root, per_class=5)
    everything = BUILDERS["digits"](tmp_path / "all", log=Log())
    check_layout(everything, 10, 1797)
    assert "BSD-3-Clause" in (everything / "DATASET.md").read_text()


# --------------------------------------------------------------------------- fashion-mnist

def _idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_fashion_mnist_from_idx_files(tmp_path):
    """Parses idx files exactly (synthetic copies; no Debian package needed)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)
    labels = np.arange(40) % 10
    src = tmp_path / "src"
    src.mkdir()
    _idx(src / "t10k-images-idx3-ubyte.gz", images)
    _idx(src / "t10k-labels-idx1-ubyte.gz", labels)
    np.testing.assert_array_equal(fm_mod.read_idx(src / "t10k-images-idx3-ubyte.gz"), images)
    root = BUILDERS["fashion-mnist"](tmp_path / "fm", log=Log(), split="test", per_class=3,
                                     source_dir=src)
    mapping = check_layout(root, 10, 30)
    assert "ankle_boot" in mapping and "t-shirt_top" in mapping
    assert mapping["ankle_boot"] == "A photo of an ankle boot."
    with Image.open(root / "ankle_boot" / "test_00009.png") as im:
        np.testing.assert_array_equal(np.asarray(im), images[9])
    with pytest.raises(MamfError, match="not found"):
        BUILDERS["fashion-mnist"](tmp_path / "fm2", log=Log(), source_dir=src)  # no train files
    (src / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\0\0\x08\x01\0\0\0\x09abc"))
    with pytest.raises(MamfError, match="truncated or malformed"):
        BUILDERS["fashion-mnist"](tmp_path / "fm3", log=Log(), split="test", source_dir=src)
    with pytest.raises(MamfError, match="split"):
        BUILDERS["fashion-mnist"](tmp_path / "fm4", log=Log(), split="validation")


def test_fashion_mnist_missing_package_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(fm_mod, "DEFAULT_SOURCE", tmp_path / "nowhere")
    monkeypatch.setattr(fm_mod.os, "geteuid", lambda: 1000, raising=False)
    with pytest.raises(MamfError, match="sudo apt-get install -y dataset-fashion-mnist"):
        BUILDERS["fashion-mnist"](tmp_path / "fm", log=Log())
    with pytest.raises(MamfError, match="apt-get install dataset-fashion-mnist"):
        BUILDERS["fashion-mnist"](tmp_path / "fm", log=Log(), install=False)
    assert not (tmp_path / "fm").exists()


@pytest.mark.slow
def test_fashion_mnist_debian_package(tmp_path):
    log = Log()
    try:
        root = BUILDERS["fashion-mnist"](tmp_path / "fashion-mnist", log=log, per_class=20)
    except MamfError as e:
        pytest.skip(f"Debian package {fm_mod.DEBIAN_PACKAGE} not available: {e}")
    mapping = check_layout(root, 10, 200)
    assert len(mapping) == 10
    with Image.open(next((root / "trouser").iterdir())) as im:
        assert im.size == (28, 28) and im.mode == "L"
    assert "MIT" in (root / "DATASET.md").read_text()
    assert_idempotent("fashion-mnist", root, per_class=20)


# --------------------------------------------------------------------------- emoji

def _png(rgba: tuple[int, int, int, int], mode: str = "RGBA", mark: int = 0) -> bytes:
    img = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    img.paste(Image.new("RGBA", (32, 32), rgba), (16 + mark, 16))
    buf = io.BytesIO()
    (img if mode == "RGBA" else img.convert("P")).save(buf, format="PNG")
    return buf.getvalue()


def _fake_package(path: Path, image_set: str, entries: list[dict], images: dict[str, bytes],
                  extra: dict[str, bytes] | None = None) -> None:
    files = {"package/emoji.json": json.dumps(entries).encode(),
             "package/README.md": b"* Android/Google/Noto images, are available under Apache\n",
             "package/LICENSE": b"MIT", **(extra or {})}
    files.update({f"package/img/{image_set}/64/{k}": v for k, v in images.items()})
    files[f"package/img/{image_set}/sheets/64.png"] = b"sheet"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_emoji_from_cached_packages(tmp_path):
    """The whole emoji pipeline on small fake packages placed in the download cache."""
    def entry(name, short, unified, category="Smileys & Emotion", sub="face-smiling", order=0,
              added="1.0", **kw):
        return {"name": name, "short_name": short, "unified": unified, "image": f"{unified}.png",
                "category": category, "subcategory": sub, "sort_order": order, "added_in": added,
                "has_img_google": True, "has_img_twitter": True, "has_img_apple": True, **kw}

    entries = [
        entry("GRINNING FACE", "grinning", "1f600", order=1,
              skin_variations={"1F3FB": {"image": "1f600-1f3fb.png"}}),
        entry("MAN IN TUXEDO", "person_in_tuxedo", "1f935", "People & Body", "person-role", 2),
        entry("MAN IN TUXEDO", "man_in_tuxedo", "1f935-200d", "People & Body", "person-role", 3),
        entry("France Flag", "fr", "1f1eb", "Flags", "country-flag", 9, added="0.6"),
        entry("Clipperton Island Flag", "flag-cp", "1f1e8", "Flags", "country-flag", 8, added="2.0"),
        entry("EMOJI MODIFIER FITZPATRICK TYPE-3", "skin-tone-3", "1f3fc", "Component", "skin-tone", 5),
        entry("KEYCAP: *", "keycap_star", "002a", "Symbols", "keycap", 6),
        entry("NO TWITTER", "nt", "1f999", order=7, has_img_twitter=False),
    ]
    colours = [(200, 0, 0, 255), (0, 200, 0, 255), (0, 0, 200, 255), (9, 9, 9, 255),
               (9, 9, 9, 255), (90, 60, 30, 255), (50, 50, 50, 128), (1, 2, 3, 255)]
    cache = tmp_path / "cache"
    cache.mkdir()
    for image_set, mode in (("google", "RGBA"), ("twitter", "P")):
        images = {e["image"]: _png(c, mode, mark=k) for k, (e, c) in enumerate(zip(entries, colours))}
        images["1f3fc.png"] = _png((90, 60, 30, 255), mode)
        # France and Clipperton Island share one design in the google set only.
        if image_set == "google":
            images["1f1e8.png"] = images["1f1eb.png"]
        package = emoji_mod.SETS[image_set]
        _fake_package(cache / f"{package}-{emoji_mod.NPM_VERSION}.tgz", image_set, entries, images)

    log = Log()
    root = BUILDERS["emoji"](tmp_path / "emoji", log=log, cache_dir=cache)
    mapping = check_layout(root, 5, 10)
    assert sorted(mapping) == ["france_flag", "grinning_face", "keycap_asterisk", "man_in_tuxedo",
                               "person_in_tuxedo"]
    assert mapping["grinning_face"] == "An emoji of grinning face."
    classes = json.loads((root / "classes.json").read_text(encoding="utf-8"))
    assert classes["france_flag"]["subcategory"] == "country-flag"
    assert classes["keycap_asterisk"]["name"] == "keycap: *"
    for label in mapping:
        assert sorted(p.name for p in (root / label).iterdir()) == ["google.png", "twitter.png"]
        for p in (root / label).iterdir():
            with Image.open(p) as im:
                assert im.mode == "RGB" and im.size == (64, 64)
                assert im.getpixel((0, 0)) == (255, 255, 255)  # transparency -> white
    with Image.open(root / "keycap_asterisk" / "google.png") as im:  # half-transparent grey on white
        assert im.getpixel((24, 24)) == pytest.approx((153, 153, 153), abs=2)
    assert any("dropped 1" in line for line in log)
    assert_idempotent("emoji", root, cache_dir=cache)
    limited = BUILDERS["emoji"](tmp_path / "emoji2", log=Log(), cache_dir=cache, limit=2)
    check_layout(limited, 2, 4)
    assert sorted(json.loads((limited / "classes.json").read_text())) == ["france_flag",
                                                                          "grinning_face"]


@pytest.mark.parametrize("bad", ["../evil.txt", "/etc/evil", "package/../../evil"])
def test_emoji_rejects_unsafe_archives(tmp_path, bad):
    archive = tmp_path / "x.tgz"
    _fake_package(archive, "google", [], {"1f600.png": _png((1, 1, 1, 255))}, extra={bad: b"x"})
    with pytest.raises(MamfError, match="unsafe member"):
        emoji_mod.read_package(archive, "google")
    assert not (tmp_path.parent / "evil.txt").exists()


def test_emoji_without_npm(tmp_path, monkeypatch):
    monkeypatch.setattr(emoji_mod.shutil, "which", lambda name: None)
    with pytest.raises(MamfError, match="needs npm"):
        BUILDERS["emoji"](tmp_path / "emoji", log=Log(), cache_dir=tmp_path / "empty-cache")
    assert not (tmp_path / "emoji").exists()


@pytest.fixture(scope="session")
def npm_cache(tmp_path_factory) -> Path:
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed: cannot fetch the emoji packages")
    cache = tmp_path_factory.mktemp("npm-downloads")
    try:
        for package in emoji_mod.SETS.values():
            emoji_mod.npm_pack(package, emoji_mod.NPM_VERSION, cache, log=lambda line: None)
    except MamfError as e:
        pytest.skip(f"the npm registry is not reachable: {e}")
    return cache


@pytest.mark.slow
def test_emoji_real_packages(tmp_path, npm_cache):
    log = Log()
    root = BUILDERS["emoji"](tmp_path / "emoji", log=log, limit=25, cache_dir=npm_cache)
    mapping = check_layout(root, 25, 50)
    classes = json.loads((root / "classes.json").read_text(encoding="utf-8"))
    assert set(classes) == set(mapping)
    for label, info in classes.items():
        assert {"name", "category", "subcategory"} <= set(info)
        assert info["category"] and info["subcategory"] and info["category"] != "Component"
        assert mapping[label] == f"An emoji of {info['name']}."
        assert sorted(p.name for p in (root / label).iterdir()) == ["google.png", "twitter.png"]
    with Image.open(root / "abacus" / "twitter.png") as im:
        assert im.mode == "RGB" and im.size == (64, 64)
    text = (root / "DATASET.md").read_text(encoding="utf-8")
    assert "Apache License 2.0" in text and "CC-BY 4.0" in text and "Twemoji" in text
    assert not any("downloading" in line for line in log)  # the cache was used
    assert any("1906 with images in both sets" in line for line in log)
    assert_idempotent("emoji", root, limit=25, cache_dir=npm_cache)


def _svg(fill: str) -> bytes:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 72 72">'
            f'<rect x="18" y="18" width="36" height="36" fill="{fill}"/></svg>').encode()


def _fake_openmoji(path: Path, svgs: dict[str, bytes]) -> None:
    files = {"package/LICENSE.txt": b"CC BY-SA 4.0", "package/data/openmoji.json": b"[]",
             **{f"package/color/svg/{k}.svg": v for k, v in svgs.items()},
             **{f"package/black/svg/{k}.svg": _svg("#000") for k in svgs}}
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_emoji_with_openmoji_as_third_style(tmp_path):
    """openmoji=True: only emoji OpenMoji draws are kept (code points matched without FE0F), each
    with a rasterised openmoji.png; the licence is recorded; without it the build is as before."""
    pytest.importorskip("resvg_py")
    entries = [{"name": n, "short_name": n, "unified": u, "image": f"{u.lower()}.png",
                "category": "Symbols", "subcategory": "heart", "sort_order": k, "added_in": "1.0",
                "has_img_google": True, "has_img_twitter": True}
               for k, (n, u) in enumerate([("RED HEART", "2764-FE0F"), ("ORANGE HEART", "1F9E1"),
                                           ("BLUE HEART", "1F499")])]
    cache = tmp_path / "cache"
    cache.mkdir()
    for image_set in ("google", "twitter"):
        images = {e["image"]: _png((40 * k, 10, 10, 255), mark=k) for k, e in enumerate(entries)}
        _fake_package(cache / f"{emoji_mod.SETS[image_set]}-{emoji_mod.NPM_VERSION}.tgz",
                      image_set, entries, images)
    # OpenMoji names red heart without FE0F and has no blue heart
    _fake_openmoji(cache / "openmoji-17.0.0.tgz", {"2764": _svg("#ff0000"), "1F9E1": _svg("#ff8000"),
                                                   "1F600": _svg("#ffff00")})
    log = Log()
    root = BUILDERS["emoji"](tmp_path / "emoji", log=log, cache_dir=cache, openmoji=True)
    check_layout(root, 2, 6)
    assert sorted(p.name for p in (root / "red_heart").iterdir()) == ["google.png", "openmoji.png",
                                                                     "twitter.png"]
    with Image.open(root / "red_heart" / "openmoji.png") as im:
        assert im.mode == "RGB" and im.size == (64, 64)
        assert im.getpixel((0, 0)) == (255, 255, 255)
        assert im.getpixel((32, 32)) == (255, 0, 0)
    with Image.open(root / "orange_heart" / "openmoji.png") as im:
        assert im.getpixel((32, 32)) == (255, 128, 0)
    assert any("2 of 3 emoji are drawn in OpenMoji" in line for line in log)
    text = (root / "DATASET.md").read_text(encoding="utf-8")
    assert "CC BY-SA 4.0" in text and "openmoji@17.0.0" in text
    manifest = json.loads((root / MANIFEST).read_text())
    assert "openmoji" in manifest["npm"] and manifest["options"]["openmoji"] is True
    assert_idempotent("emoji", root, cache_dir=cache, openmoji=True)
    plain = BUILDERS["emoji"](tmp_path / "plain", log=Log(), cache_dir=cache)
    check_layout(plain, 3, 6)
    assert "openmoji" not in json.loads((plain / MANIFEST).read_text())["options"]
    assert "CC BY-SA" not in (plain / "DATASET.md").read_text(encoding="utf-8")


def test_openmoji_without_rasteriser_is_one_line(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_resvg(name, *a, **kw):
        if name == "resvg_py":
            raise ImportError(name)
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_resvg)
    with pytest.raises(MamfError, match="needs the SVG rasteriser resvg-py"):
        emoji_mod.rasterise(_svg("#000"))
