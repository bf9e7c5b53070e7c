"""Importers: the paper's five datasets from the archives their publishers distribute.

Each importer reads the archive as published (tar, tar.gz or zip, streamed member by member) or
its extracted folder, and writes the standard `<label>/<image>` layout with `label_to_text.json`
and `DATASET.md`, like the builders:

    from mamf.data.importers import IMPORTERS
    IMPORTERS["cub"]("CUB_200_2011.tgz", "data/cub", classes=50, per_class=40, seed=0)

From the shell: `mamf data cub --from CUB_200_2011.tgz --out data/cub --classes 50 --per-class 40`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mamf.data.importers.abo import import_abo_material
from mamf.data.importers.clevr import import_clevr_counting
from mamf.data.importers.cub import import_cub
from mamf.data.importers.fungi import import_fungi
from mamf.data.importers.mini_imagenet import import_mini_imagenet

IMPORTERS: dict[str, Callable[..., Path]] = {
    "cub": import_cub,
    "mini-imagenet": import_mini_imagenet,
    "fungi": import_fungi,
    "clevr-counting": import_clevr_counting,
    "abo-material": import_abo_material,
}

__all__ = ["IMPORTERS", "import_abo_material", "import_clevr_counting", "import_cub",
           "import_fungi", "import_mini_imagenet"]
