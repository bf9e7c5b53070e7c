"""Device consistency without a GPU: every registered method trains, tunes, adapts and scores
with its model on the stand-in device (`tests/standin.py`), where an op that mixes a device tensor
with a host tensor fails as it does on CUDA. A new method that builds a tensor on the CPU and adds
it to the model's fails here, in CI, not on a user's GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from standin import DEVICE, Device, host, on_device

from mamf import methods
from mamf.config import build_config
from mamf.engine.metatest import evaluation_tasks, meta_test, tuned_method
from mamf.engine.training import train
from mamf.methods.embedded import Embedded
from mamf.methods.gda import gda_classifier
from mamf.runs.prepare import prepare

pytestmark = pytest.mark.device

SMALL = {"model": "tiny-random-clip", "data.ways": 3, "train.steps": 2, "train.batch_size": 8,
         "train.augment": True, "metatest.epochs": 1, "train.inner_epochs": 1,
         "baseline.lpp_epochs": 2, "baseline.clap_epochs": 2, "baseline.taskres_epochs": 2,
         "baseline.prolip_epochs": 2, "baseline.tip_f_epochs": 2, "baseline.probe_steps": 2}
# the test-time baselines run on frozen towers (their usual base), the others on the whole model
FROZEN = {"train.freeze_image_backbone": True, "train.freeze_text_tower": True}


def settings_for(name: str) -> dict:
    cls = methods.method_class(name)
    if cls.only_when_named and not issubclass(cls, methods.TrainedMethod):
        return FROZEN
    return {}


def on_stand_in(monkeypatch, folder, **over):
    """`prepare` with the model and the inputs on the stand-in device."""
    monkeypatch.setattr("mamf.runs.prepare.resolve_device", lambda name: DEVICE)
    config = build_config(overrides={**SMALL, "data.root": str(folder), **over})
    return config, *prepare(config)


@pytest.mark.parametrize("name", methods.names())
def test_each_method_trains_tunes_adapts_and_scores_on_the_device(monkeypatch, colour_folder,
                                                                  name):
    trains = issubclass(methods.method_class(name), methods.TrainedMethod)
    with on_device():
        config, model, dataset, inputs = on_stand_in(
            monkeypatch, colour_folder, **({"train.method": name} if trains else {}),
            **settings_for(name))
        assert all(isinstance(p, Device) for p in model.parameters())
        if trains:
            result = train(model, inputs, dataset, config, progress=False)
            assert len(result.losses) == 2 and all(np.isfinite(result.losses))
        plugin, _ = tuned_method(model, inputs, dataset, name, config, 3)
        tasks = evaluation_tasks(dataset, config, "test", 3)[:2]
        accs = meta_test(model, inputs, tasks, plugin, config, 3, progress=False)
    assert len(accs) == len(tasks) and all(0 <= a <= 1 for a in accs)


def test_the_stand_in_refuses_a_host_tensor_as_cuda_does():
    """The check the tests above rely on: GDA's identity once came from the CPU."""
    with on_device():
        support = torch.randn(6, 4).to(DEVICE)
        task = Embedded(support, torch.tensor([0, 0, 1, 1, 2, 2]).to(DEVICE), support,
                        torch.tensor([0, 0, 1, 1, 2, 2]).to(DEVICE),
                        torch.randn(3, 4).to(DEVICE), 10.0)
        weight, bias = gda_classifier(task)
        assert isinstance(weight, Device) and isinstance(bias, Device)
        with pytest.raises(RuntimeError, match="same device"):
            support + torch.eye(6, 4)


def test_auto_means_the_cpu_in_tests_even_where_a_gpu_is_seen(monkeypatch):
    from mamf.system.device import resolve_device, resolve_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_precision("auto", resolve_device("auto")) == "fp32"
    monkeypatch.delenv("MAMF_DEVICE")
    assert resolve_device("auto") == torch.device("cuda")


def test_auto_precision_is_bf16_only_where_the_gpu_has_it_natively(monkeypatch):
    from mamf.system.device import resolve_precision

    cuda = torch.device("cuda")
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                            lambda including_emulation=True, native=native: native)
        assert resolve_precision("auto", cuda) == expected
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"


def test_fp16_is_refused_in_one_line(colour_folder, capsys):
    from mamf.cli import main

    code = main(["evaluate", "--model", "tiny-random-clip", "--data", str(colour_folder),
                 "--out", "unused", "--precision", "fp16"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "fp16" in err[0] and "loss scaling" in err[0]


def test_more_processes_than_gpus_is_one_clear_error(monkeypatch):
    from mamf.parallel import distributed
    from mamf.system.errors import MamfError

    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(MamfError, match=r"started 4 processes on this node, which has 2 GPU"):
        distributed.local_device(torch.device("cuda"))
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.local_device(torch.device("cuda")) == torch.device("cuda", 1)


def test_tf32_is_a_setting_applied_on_cuda_only_and_recorded_in_rows():
    from mamf.results import environment
    from mamf.system.device import set_tf32

    before = torch.backends.cuda.matmul.allow_tf32
    try:
        set_tf32(torch.device("cpu"), not before)
        assert torch.backends.cuda.matmul.allow_tf32 == before  # a CPU's fp32 is never touched
        for on in (True, False):
            set_tf32(torch.device("cuda"), on)
            assert environment("cuda:0")["tf32"] is on
        assert environment("cpu")["tf32"] is None
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    assert build_config().train.tf32 is True


@pytest.mark.parametrize("method", ["classical", "mamf"])
@pytest.mark.parametrize("frozen_text", [False, True])
def test_a_training_step_makes_no_host_synchronisation(monkeypatch, colour_folder, method,
                                                       frozen_text):
    """Losses stay on the device until the loop reads them (once here: 10 steps, fewer than its
    read interval); indices, labels and images reach the device from pinned memory without the
    host waiting. What remains is transformers' CLIP text tower checking its padding mask for
    a shortcut (two reads a forward), absent with a frozen text tower."""
    with on_device() as syncs:
        config, model, dataset, inputs = on_stand_in(
            monkeypatch, colour_folder, **{"train.method": method, "train.steps": 10,
                                           "train.checkpoint_every": 0,
                                           "train.freeze_text_tower": frozen_text})
        syncs.by_kind.clear()
        syncs.by_place.clear()
        result = train(model, inputs, dataset, config, progress=False)
    assert len(result.losses) == 10 and all(np.isfinite(result.losses))
    ours = syncs.in_mamf()
    # once a run: the normalisation statistics reach the device; once at the end: the losses
    assert sum(ours.values()) <= 3, ours
    if frozen_text:
        assert syncs.total == sum(ours.values()), syncs.by_place


def test_the_boundary_caches_are_held_on_the_host_and_streamed_from_pinned_memory(
        monkeypatch, colour_folder):
    """Below the last blocks the frozen outputs are [images, tokens, width] (tens of GB at
    ImageNet's scale): held on the host, each batch's rows gathered there and copied to the
    device from pinned memory, without the host waiting."""
    with on_device() as syncs:
        config, model, dataset, inputs = on_stand_in(
            monkeypatch, colour_folder, **{"train.method": "mamf", "train.steps": 3,
                                           "train.augment": False,
                                           "train.unfreeze_image_blocks": 1,
                                           "train.unfreeze_text_layers": 1})
        assert not isinstance(inputs.features, Device) and inputs.features.device.type == "cpu"
        assert not isinstance(inputs.text_boundary, Device)
        syncs.by_place.clear()
        result = train(model, inputs, dataset, config, progress=False)
        rows = inputs.frozen_features(np.arange(4))
    assert isinstance(rows, Device) and torch.equal(host(rows), inputs.features[:4])
    assert len(result.losses) == 3
    assert sum(syncs.in_mamf().values()) <= 3, syncs.in_mamf()


def test_prompts_are_encoded_in_chunks_on_a_gpu(monkeypatch, colour_folder):
    """1,000 classes x 80 templates do not fit one batch: a GPU encodes its prompts in chunks,
    to the embeddings of one batch."""
    import mamf.features.inputs

    config = build_config(overrides={**SMALL, "data.root": str(colour_folder)})
    model, dataset, inputs = prepare(config)
    whole = inputs.texts(model, np.arange(6))  # at once: fewer prompts than a chunk
    seen = []
    encode = model.encode_texts
    monkeypatch.setattr(model, "encode_texts",
                        lambda tokens: seen.append(len(tokens["input_ids"])) or encode(tokens))
    monkeypatch.setattr(mamf.features.inputs, "PROMPT_CHUNK", 4)
    with on_device():
        model.to(DEVICE)
        inputs.device = DEVICE
        inputs.tokens = {k: v.to(DEVICE) for k, v in inputs.tokens.items()}
        chunked = host(inputs.texts(model, np.arange(6)))
    assert seen == [4, 2]
    assert torch.allclose(chunked, whole, atol=1e-5)


def test_adam_is_fused_on_a_gpu_only_and_a_checkpoint_crosses_devices(tmp_path):
    """Fused Adam where it cannot change a CPU row; a checkpoint's optimiser written by fused
    Adam on a GPU resumes into the loop on a CPU (how the update runs is not a setting)."""
    from types import SimpleNamespace

    from mamf.engine.checkpoint import Checkpointer
    from mamf.methods.base import make_optimizer
    from mamf.system.device import fused_optimizer_options

    on_gpu = [SimpleNamespace(device=torch.device("cuda"))]
    assert fused_optimizer_options(on_gpu) == {"fused": True}
    param = torch.nn.Parameter(torch.ones(3))
    cpu = make_optimizer([param], lr=0.1)
    assert not cpu.defaults.get("fused")
    param.grad = torch.ones(3)
    cpu.step()
    state = cpu.state_dict()
    state["param_groups"][0]["fused"] = True  # as a GPU run wrote it
    again = make_optimizer([torch.nn.Parameter(torch.ones(3))], lr=0.1)
    Checkpointer(tmp_path, 1).load_optimizer(again, state)
    assert not again.param_groups[0]["fused"]
    assert torch.equal(again.state_dict()["state"][0]["exp_avg"], state["state"][0]["exp_avg"])


def test_train_compile_compiles_the_towers_in_place_on_a_gpu_only():
    from mamf.models.tiny import build
    from mamf.system.device import compile_towers

    model = build()
    names = list(model.state_dict())
    compile_towers(model, torch.device("cpu"), True)
    assert all(getattr(c, "_compiled_call_impl", None) is None for c in model.children())
    compile_towers(model, torch.device("cuda"), True)  # lazily: nothing runs until a call
    assert all(c._compiled_call_impl is not None for c in model.children())
    assert list(model.state_dict()) == names
