"""Task construction: K(n, N), the uniform sampler, and both protocols' splits."""

from __future__ import annotations

import numpy as np
import pytest

from mamf.data.dataset import ImageDataset
from mamf.data.splits import class_split, halves, per_class_split
from mamf.protocols.episodic import episodic_pool
from mamf.protocols.paper import paper_pool
from mamf.system.errors import MamfError
from mamf.tasks.task import episodic_task, halved_task, number_of_tasks, sample_classes


def test_number_of_tasks_matches_the_paper_for_ten_classes():
    assert [number_of_tasks(n, 10) for n in range(2, 10)] == [31, 19, 14, 10, 8, 6, 4, 3]


def test_number_of_tasks_meets_its_coverage_promise():
    for N in (5, 10, 37, 100):
        for n in range(2, N):
            k = number_of_tasks(n, N)
            # probability a given class is missed by all k tasks, rounding allowed either way
            assert (1 - n / N) ** (k + 1) <= 0.001 <= (1 - n / N) ** max(k - 1, 0)


def test_uniform_sampler_is_reproducible():
    a = [sample_classes(np.random.default_rng(5), 20, 4) for _ in range(3)]
    b = [sample_classes(np.random.default_rng(5), 20, 4) for _ in range(3)]
    assert all((x == y).all() for x, y in zip(a, b))
    draws_a = [sample_classes(r, 20, 4) for r in [np.random.default_rng(5)] for _ in range(50)]
    rng = np.random.default_rng(5)
    draws_b = [sample_classes(rng, 20, 4) for _ in range(50)]
    assert all((x == y).all() for x, y in zip(draws_a, draws_b))
    assert any((x != draws_b[0]).any() for x in draws_b[1:])


def test_uniform_sampler_is_uniform_over_classes_and_pairs():
    N, n, draws = 8, 3, 12000
    rng = np.random.default_rng(0)
    counts = np.zeros(N)
    pairs = np.zeros((N, N))
    for _ in range(draws):
        c = sample_classes(rng, N, n)
        assert len(set(c.tolist())) == n
        counts[c] += 1
        pairs[np.ix_(c, c)] += 1
    expected = draws * n / N
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 24.3  # chi-square, 7 degrees of freedom, p = 0.001
    off = pairs[~np.eye(N, dtype=bool)]
    expected_pair = draws * n * (n - 1) / (N * (N - 1))
    chi2_pairs = ((off - expected_pair) ** 2 / expected_pair).sum() / 2
    assert chi2_pairs < 54.1  # 27 degrees of freedom, p = 0.001


def test_sampler_refuses_more_ways_than_classes():
    with pytest.raises(MamfError, match="more than"):
        sample_classes(np.random.default_rng(0), 4, 5)


def test_paper_split_is_60_20_20_in_file_order(colour_folder):
    ds = ImageDataset.load(colour_folder, 32)
    train, dev, test = (paper_pool(ds, s) for s in ("train", "dev", "test"))
    for c, imgs in enumerate(ds.class_images):
        parts = [train.images[c], dev.images[c], test.images[c]]
        assert [len(p) for p in parts] == [6, 2, 2]
        joined = np.concatenate(parts)
        assert (joined == imgs).all()  # in file-name order, nothing lost
        assert len(set(joined.tolist())) == len(joined)  # no image in two splits
        names = [ds.file_names[i] for i in imgs]
        assert names == sorted(names)


def test_paper_split_sizes():
    s = per_class_split(100)
    assert (s["train"].stop, s["dev"].stop, s["test"].stop) == (60, 80, 100)


def test_paper_tasks_support_and_query_are_disjoint_halves(colour_folder):
    ds = ImageDataset.load(colour_folder, 32)
    pool = paper_pool(ds, "test")
    rng = np.random.default_rng(1)
    for _ in range(20):
        task = halved_task(rng, pool, 4)
        assert not set(task.support.tolist()) & set(task.query.tolist())
        for pos, c in enumerate(task.classes):
            s, q = halves(pool.images[c])
            assert (task.support[task.support_labels == pos] == s).all()
            assert (task.query[task.query_labels == pos] == q).all()


def test_episodic_split_is_class_disjoint_and_covers_everything():
    parts = class_split(37, (0.6, 0.2, 0.2), seed=3)
    ids = np.concatenate(list(parts.values()))
    assert sorted(ids.tolist()) == list(range(37))
    assert all(len(v) > 0 for v in parts.values())
    again = class_split(37, (0.6, 0.2, 0.2), seed=3)
    assert all((parts[k] == again[k]).all() for k in parts)


def test_episodic_tasks_have_the_requested_shape(colour_folder):
    ds = ImageDataset.load(colour_folder, 32)
    pool = episodic_pool(ds, "train")
    rng = np.random.default_rng(0)
    task = episodic_task(rng, pool, 3, shots=2, queries=4)
    assert len(task.support) == 6 and len(task.query) == 12
    assert set(task.classes.tolist()) <= set(pool.classes.tolist())
    assert not set(task.support.tolist()) & set(task.query.tolist())
    assert np.bincount(task.query_labels).tolist() == [4, 4, 4]


def test_episodic_task_names_a_label_with_too_few_images(colour_folder):
    ds = ImageDataset.load(colour_folder, 32)
    pool = episodic_pool(ds, "train")
    with pytest.raises(MamfError, match=r"label .* has 10 usable image\(s\); the task needs 20"):
        episodic_task(np.random.default_rng(0), pool, 2, 5, 15, ds.classes)
