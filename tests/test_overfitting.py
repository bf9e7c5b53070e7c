"""The overfitting signals: meta-test on training-split tasks, and training on one image style."""

from __future__ import annotations

import numpy as np
import pytest

from mamf import protocols
from mamf.config import build_config
from mamf.data.dataset import ImageDataset
from mamf.data.splits import class_split, per_class_split
from mamf.engine.metatest import evaluation_tasks
from mamf.engine.training import train_pool
from mamf.system.errors import MamfError


def config_for(folder, protocol="paper", **data):
    return build_config({"model": "tiny-random-clip",
                         "data": {"root": str(folder), "protocol": protocol, "shots": 1,
                                  "queries": 2, "tasks": 20, **data},
                         "metatest": {"split": "train"}})


@pytest.mark.parametrize("protocol", ["paper", "episodic"])
def test_train_split_tasks_use_only_training_images_and_classes(colour_folder, protocol):
    config = config_for(colour_folder, protocol)
    dataset = ImageDataset.load(colour_folder, 32)
    tasks = evaluation_tasks(dataset, config, "train", 2)
    if protocol == "paper":
        allowed = {int(i) for x in dataset.class_images for i in x[per_class_split(len(x))["train"]]}
    else:
        classes = class_split(dataset.n_classes, (0.6, 0.2, 0.2), 0)["train"]
        allowed = {int(i) for c in classes for i in dataset.class_images[c]}
        assert all(set(t.classes) <= set(classes.tolist()) for t in tasks)
    used = {int(i) for t in tasks for i in np.concatenate([t.support, t.query])}
    assert used and used <= allowed
    pool = protocols.get(protocol).pool(dataset, config.data, "test", config.seed)
    test = {int(i) for x in pool.images for i in x}
    assert not used & test


def test_split_train_rows_from_evaluate(colour_folder, tmp_path):
    from mamf.cli import main
    from mamf.system.io import read_jsonl

    assert main(["evaluate", "--model", "tiny-random-clip", "--data", str(colour_folder), "--out",
                 str(tmp_path), "--ways", "3", "--split", "train", "--quiet"]) == 0
    assert read_jsonl(tmp_path / "results.jsonl")[0]["split"] == "train"


def styled_folder(root):
    """Two 'vendors' per class: google_*.png and twitter_*.png."""
    from PIL import Image

    for c, rgb in enumerate([(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0)]):
        d = root / f"class{c}"
        d.mkdir(parents=True)
        for vendor in ("google", "twitter"):
            for i in range(5):
                Image.new("RGB", (16, 16), rgb).save(d / f"{vendor}_{i}.png")
    (root / "only_twitter").mkdir()
    for i in range(10):
        Image.new("RGB", (16, 16), (90, 90, 90)).save(root / "only_twitter" / f"twitter_{i}.png")
    return root


def test_train_match_restricts_training_images_and_drops_empty_classes(tmp_path, caplog):
    root = styled_folder(tmp_path / "styles")
    dataset = ImageDataset.load(root, 32)
    full = train_pool(dataset, config_for(root))
    pool = train_pool(dataset, config_for(root, train_match="google"))
    names = dataset.file_names
    assert all(names[i].startswith("google") for x in pool.images for i in x)
    assert any(names[i].startswith("twitter") for x in full.images for i in x)
    assert "only_twitter" not in [dataset.classes[c] for c in pool.classes]
    assert len(pool.classes) == len(full.classes) - 1
    assert "left out of training" in caplog.text
    with pytest.raises(MamfError, match="matches no training image"):
        train_pool(dataset, config_for(root, train_match="apple"))


def test_train_match_reaches_training(tmp_path):
    """Trained on google images only, every method's batches hold google images only."""
    from mamf import methods
    from mamf.runs.prepare import prepare

    root = styled_folder(tmp_path / "styles")
    for method in ("classical", "mamf"):
        config = build_config({"model": "tiny-random-clip", "data": {"root": str(root),
                               "train_match": "google", "ways": 2},
                               "train": {"method": method, "steps": 5, "batch_size": 4}})
        model, dataset, inputs = prepare(config, fresh=True)
        m = methods.create(method, config)
        from mamf.engine.training import make_sampler

        pool = train_pool(dataset, config)
        m.begin(model, inputs, pool, np.random.default_rng(0),
                make_sampler(m, model, inputs, pool, config))
        for _ in range(5):
            batch = next(m.stream)
            assert all(dataset.file_names[i].startswith("google") for i in batch.images)
