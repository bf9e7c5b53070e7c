"""End to end on the offline pretrained model: build data, run all four methods, report."""

from __future__ import annotations

import pytest
import yaml

pytest.importorskip("efficientnet_lite_pytorch")

from mamf.cli import main  # noqa: E402
from mamf.system.io import read_jsonl  # noqa: E402

pytestmark = pytest.mark.slow  # torchrun, subprocesses or the pretrained model


def test_effnet_minilm_all_methods_on_digits(tmp_path, capsys):
    exp = {
        "name": "e2e", "model": "effnet-minilm",
        "methods": ["zeroshot", "classical", "mamf", "fomaml"], "seeds": [312],
        "settings": {
            "data": {"protocol": "paper"},
            "train": {"freeze_image_backbone": True, "freeze_text_tower": True,
                      "augment": False, "lr": 1e-2, "epochs": 8, "inner_lr": 0.1},
            "metatest": {"lr": 1e-3, "epochs": 5, "inner_lr": 0.1},
        },
        "datasets": {"digits": {"build": "digits", "build_options": {"per_class": 20},
                                "ways": [5]}},
    }
    path = tmp_path / "e2e.yaml"
    path.write_text(yaml.safe_dump(exp))
    out = tmp_path / "out"
    assert main(["experiment", str(path), "--out", str(out), "--quiet"]) == 0
    rows = {r["method"]: r for r in read_jsonl(out / "results.jsonl")}
    assert set(rows) == {"zeroshot", "classical", "mamf", "fomaml"}
    for method, r in rows.items():
        assert r["n_tasks"] == 10 and r["model"] == "effnet-minilm"
        if method != "zeroshot":
            assert r["train_loss_last"] < r["train_loss_first"], method
    # fine-tuning a real pretrained model on digits lifts it well above chance (0.2)
    for method in ("classical", "mamf"):
        assert rows[method]["acc_mean"] - rows[method]["acc_ci95"] > 0.2, rows[method]
    report = (out / "report.md").read_text()
    assert "Claim 1" in report and "digits" in report
    assert "MAMF" in capsys.readouterr().out
