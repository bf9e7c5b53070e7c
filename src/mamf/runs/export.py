"""`mamf export RUN --format hf|peft|onnx --out DIR`: a trained run in a form other tools load.

- `hf`: a `save_pretrained` folder of the run's transformers model (LoRA merged into the weights)
  that the model's own class (`CLIPModel`, `SiglipModel`) loads with `from_pretrained`.
- `peft`: a LoRA run's adapters as a peft folder (`adapter_config.json`,
  `adapter_model.safetensors`) that `PeftModel.from_pretrained(base, DIR)` puts on the base model;
  with `train.heads=random` the fresh heads travel as peft's `modules_to_save`.
- `onnx`: `image.onnx` (pixel_values -> image embedding) and `text.onnx` (tokens -> text
  embedding), for any model, LoRA merged.

Every export is loaded back and compared with the run's model in PyTorch (embeddings within
TOLERANCE) before it is reported written; a mismatch is an error, never a silent folder. The
trained logit scale is not part of an embedding: `mamf_export.json` records it with the run's
settings, beside the files.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from mamf.models import adapters
from mamf.models.base import DualEncoder
from mamf.system.errors import MamfError
from mamf.system.io import atomic_write_bytes, atomic_write_text, follow_umask, make_folder

log = logging.getLogger(__name__)

FORMATS = ("hf", "peft", "onnx")
TOLERANCE = 1e-5
MANIFEST = "mamf_export.json"


def export_run(run_dir: Path, fmt: str, out: Path) -> list[str]:
    """Export the run at `run_dir` as `fmt` into `out`; returns the files written (checked)."""
    from mamf.runs.run_folder import load_run

    if fmt not in FORMATS:
        raise MamfError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    config, model = load_run(Path(run_dir))
    model.eval()
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise MamfError(f"{out} is not empty: export into a new folder")
    lora = adapters.enabled(config.train)
    if fmt == "peft" and not lora:
        raise MamfError(f"{run_dir} trained without adapters (train.adapter={config.train.adapter}"
                        "): there is no peft adapter to export; use --format hf or onnx")
    if fmt in ("hf", "peft") and model.transformers_model() is None:
        raise MamfError(f"model {config.model!r} has no standard transformers form (its towers "
                        "are not one transformers model): use --format onnx")
    examples = _examples(model)
    expected = _embeddings(model, examples)
    make_folder(out)
    if fmt == "peft":
        written = _export_peft(model, config, out)
        got = _embeddings(_load_peft(model, config, out), examples)
    else:
        if lora:
            merge_lora(model)
        written = _export_hf(model, out) if fmt == "hf" else _export_onnx(model, examples, out)
        got = _load_hf(model, out, examples) if fmt == "hf" else _run_onnx(out, examples)
    for part in ("image", "text"):
        err = (got[part] - expected[part]).abs().max().item()
        if not err <= TOLERANCE:
            raise MamfError(f"the {fmt} export of {run_dir} gives other {part} embeddings than "
                            f"the run (max difference {err:.2e} > {TOLERANCE}): not exported")
    manifest = {"format": fmt, "run": str(run_dir), "model": config.model,
                "method": config.train.method, "adapter": config.train.adapter,
                "logit_scale": float(model.logit_scale().detach()),
                "loss_parameters": {n: p.detach().flatten().tolist() for n, p in
                                    model.named_parameters()
                                    if any(p is q for q in model.loss_parameters())},
                "files": written,
                "checked_tolerance": TOLERANCE}
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1))
    for path in out.iterdir():
        if path.is_file():
            follow_umask(path)  # save_pretrained's safetensors are 0600
    return [*written, MANIFEST]


def merge_lora(model: nn.Module) -> None:
    """Fold every LoRA layer into its base layer's weight and put the base layer back."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.get_base_layer())


def _examples(model: DualEncoder) -> dict:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (3, model.image_size, model.image_size, 3), dtype=torch.uint8,
                           generator=generator)
    return {"pixels": model.preprocess(images),
            "tokens": model.tokenize(["a photo of a cat", "a dog", "an exported model, checked"])}


@torch.no_grad()
def _embeddings(model: DualEncoder, examples: dict) -> dict[str, torch.Tensor]:
    return {"image": model.encode_images(examples["pixels"]).float(),
            "text": model.encode_texts(examples["tokens"]).float()}


def _prefix(model: DualEncoder) -> str:
    """The name of the transformers model inside the DualEncoder ("clip." for HFClip)."""
    inner = model.transformers_model()
    for name, module in model.named_modules():
        if module is inner:
            return f"{name}." if name else ""
    raise MamfError(f"{type(model).__name__}.transformers_model() is not one of its modules")


def _export_hf(model: DualEncoder, out: Path) -> list[str]:
    inner = model.transformers_model()
    inner.save_pretrained(str(out), safe_serialization=True)
    preprocessor = {"image_mean": list(model.image_mean), "image_std": list(model.image_std),
                    "size": {"height": model.image_size, "width": model.image_size},
                    "do_resize": True, "do_rescale": True, "do_normalize": True,
                    "rescale_factor": 1 / 255}
    atomic_write_text(out / "preprocessor_config.json", json.dumps(preprocessor, indent=1))
    tokenizer = getattr(getattr(model, "tokenizer", None), "tokenizer", None)
    if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(str(out))
    else:
        log.warning("%s has no transformers tokenizer to save: the folder holds the model and "
                    "its image statistics only", type(model).__name__)
    return sorted(p.name for p in out.iterdir())


def _load_hf(model: DualEncoder, out: Path, examples: dict) -> dict[str, torch.Tensor]:
    """The folder loaded by the model's own transformers class, embedding the examples."""
    cls = type(model.transformers_model())
    loaded = cls.from_pretrained(str(out), use_safetensors=True).eval()
    with torch.no_grad():
        image = loaded.get_image_features(pixel_values=examples["pixels"])
        text = loaded.get_text_features(**examples["tokens"])
    return {"image": _tensor(image).float(), "text": _tensor(text).float()}


def _tensor(features) -> torch.Tensor:
    """transformers 5 may return an output object where 4 returned the tensor."""
    return features if isinstance(features, torch.Tensor) else features.pooler_output


def _export_peft(model: DualEncoder, config, out: Path) -> list[str]:
    from peft import LoraConfig
    from safetensors.torch import save_file

    prefix = _prefix(model)
    from peft.tuners.lora import LoraLayer

    names = [n for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    heads = config.train.heads == "random"
    head_names = [n[len(prefix):] for n, m in model.named_modules()
                  if any(p is q for p in m.parameters(recurse=False)
                         for q in model.head_parameters())] if heads else []
    lora = LoraConfig(r=config.train.lora_rank, lora_alpha=config.train.lora_alpha,
                      lora_dropout=config.train.lora_dropout, bias="none",
                      target_modules=[n[len(prefix):] for n in names],
                      modules_to_save=head_names or None,
                      base_model_name_or_path=config.model)
    lora.save_pretrained(str(out))
    state = {}
    for name, p in model.named_parameters():
        if not name.startswith(prefix):
            continue
        inner = name[len(prefix):]
        if adapters.is_lora_a(name) or ".lora_B." in f".{name}":
            state["base_model.model." + inner.replace(".default.", ".")] = p
        elif any(inner.startswith(h + ".") for h in head_names):
            head, _, leaf = inner.rpartition(".")
            state[f"base_model.model.{head}.{leaf}"] = p
    tmp = out / ".adapter_model.safetensors.tmp"
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp))
    atomic_write_bytes(out / "adapter_model.safetensors", tmp.read_bytes())
    tmp.unlink()
    return sorted(p.name for p in out.iterdir())


def _load_peft(model: DualEncoder, config, out: Path) -> DualEncoder:
    """The base model as the run started (adapters off), the peft folder put on its
    transformers model by `PeftModel.from_pretrained`."""
    from peft import PeftModel

    from mamf.models import load_model

    base = load_model(config.model)
    base.eval()
    inner = base.transformers_model()
    peft_model = PeftModel.from_pretrained(inner, str(out))
    peft_model.eval()
    setattr(base, _prefix(base).rstrip("."), peft_model.base_model.model)
    return base


def _export_onnx(model: DualEncoder, examples: dict, out: Path) -> list[str]:
    from mamf.features.frozen_engine import _export, _TextTower

    image = _export(_ImageTower(model), (examples["pixels"],),
                    {"pixel_values": {0: "batch"}})
    atomic_write_bytes(out / "image.onnx", image)
    tokens = examples["tokens"]
    names = list(tokens)
    text = _export(_TextTower(model, names), tuple(tokens.values()),
                   {n: {0: "batch", 1: "length"} for n in names})
    atomic_write_bytes(out / "text.onnx", text)
    return ["image.onnx", "text.onnx"]


def _run_onnx(out: Path, examples: dict) -> dict[str, torch.Tensor]:
    from mamf.features.frozen_engine import _runner, _session

    image = _runner(_session((out / "image.onnx").read_bytes()))
    text = _runner(_session((out / "text.onnx").read_bytes()))
    return {"image": image({"pixel_values": examples["pixels"]}).float(),
            "text": text(examples["tokens"]).float()}


class _ImageTower(nn.Module):
    """`model.encode_images` as a module's forward, for the exporter."""

    def __init__(self, model: DualEncoder):
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_images(pixels)
