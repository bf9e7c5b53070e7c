"""`mamf export RUN --format hf|peft|onnx --out DIR`: a trained run in a form other tools load
alone, without mamf (docs/exports.md, "Using an exported model").

- `hf`: a `save_pretrained` folder of the run's transformers model (LoRA merged into the weights)
  with its tokenizer and an image processor that resizes and crops as mamf does, so that
  `AutoModel` and `AutoProcessor` (`CLIPModel`/`CLIPProcessor`, `SiglipModel`/`SiglipProcessor`)
  give the run's probabilities.
- `peft`: a LoRA run's adapters as a peft folder (`adapter_config.json`,
  `adapter_model.safetensors`) that `PeftModel.from_pretrained(base, DIR)` puts on the base model;
  with `train.heads=random` the fresh heads travel as peft's `modules_to_save`. The tokenizer and
  image processor travel too; a base that only mamf can build (`tiny-random-clip`) travels as
  `DIR/base`. The trained temperature (and SigLIP's bias), which no adapter holds, is in
  `mamf_export.json` under `parameters`.
- `onnx`: `image.onnx` (pixel_values -> image embedding) and `text.onnx` (tokens -> text
  embedding), for any model, LoRA merged; each graph's metadata gives the image size, resizing,
  normalisation, the tokenizer's settings and the logit scale, and the tokenizer is saved beside.

Every export is loaded back and compared with the run's model in PyTorch (embeddings within
TOLERANCE, the saved tokenizer's ids equal to the run's) before it is reported written; a
mismatch is an error, never a silent folder. The folder is built under a hidden name beside
`DIR` and renamed into place once checked, so a killed export leaves no half folder at `DIR`
(its leftovers are cleared by the next export to that `DIR`).

A run whose method trained a part outside the model's towers (CoOp's and CoCoOp's prompt
context, `model.method_extension`) is refused: none of these formats can carry it, and an export
without it would be the untrained base model.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from mamf.models import adapters
from mamf.models.base import DualEncoder, TransformersForm, TransformersTokenizer, require
from mamf.system.errors import MamfError
from mamf.system.io import atomic_write_bytes, atomic_write_text, follow_umask, fsync_path, make_folder
from mamf.system.lock import LOCK_NAME, exclusive

log = logging.getLogger(__name__)

FORMATS = ("hf", "peft", "onnx")
TOLERANCE = 1e-5
MANIFEST = "mamf_export.json"
EXAMPLE_TEXTS = ["a photo of a cat", "a dog", "an exported model, checked"]
RESIZE = "shorter side to image_size (bicubic), then the centre image_size x image_size crop"


def export_run(run_dir: Path, fmt: str, out: Path) -> list[str]:
    """Export the run at `run_dir` as `fmt` into `out`; returns the files written (checked)."""
    from mamf.methods import EXTENSION
    from mamf.runs.run_folder import load_run

    if fmt not in FORMATS:
        raise MamfError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise MamfError(f"--out {out} is a file: name a new folder to export into")
    if out.is_dir() and any(out.iterdir()):
        raise MamfError(f"{out} is not empty: export into a new folder")
    config, model = load_run(Path(run_dir))
    model.eval()
    extension = getattr(model, EXTENSION, None)
    if extension is not None:
        raise MamfError(f"{run_dir} was trained by {config.train.method}, which learned a part "
                        f"outside the model's towers ({type(extension).__name__}) that no {fmt} "
                        "folder can carry: its export would be the untrained base model, so it is "
                        "not exported (docs/exports.md)")
    lora = adapters.enabled(config.train)
    if fmt == "peft" and not lora:
        raise MamfError(f"{run_dir} trained without adapters (train.adapter={config.train.adapter}"
                        "): there is no peft adapter to export; use --format hf or onnx")
    if fmt in ("hf", "peft"):
        require(model, TransformersForm, f"--format {fmt} cannot export model {config.model!r} "
                "(use --format onnx)")
    require(model, TransformersTokenizer, f"model {config.model!r} cannot be exported")
    examples = _examples(model)
    expected = _embeddings(model, examples)
    out = out.resolve()
    staging = make_folder(out.parent) / f".{out.name}.exporting"
    with exclusive(staging):  # another export into `out` is refused here, its folder kept
        try:
            for path in staging.iterdir():  # what a killed export into `out` left
                if path.name != LOCK_NAME:
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
            written = _write(model, config, fmt, lora, examples, expected, staging, run_dir)
            (staging / LOCK_NAME).unlink()
            for path in staging.rglob("*"):
                if path.is_file():
                    follow_umask(path)  # save_pretrained's safetensors are 0600
            os.replace(staging, out)  # `out` is absent or an empty folder
            fsync_path(out.parent)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)  # ours: the lock is still held
            raise
    return written


def _write(model: DualEncoder, config, fmt: str, lora: bool, examples: dict, expected: dict,
           out: Path, run_dir: Path) -> list[str]:
    """The export's files in `out`, checked, then its manifest; returns their names."""
    base = None
    if fmt == "peft":
        written = _export_peft(model, config, out)
        base = config.model
        if _builtin(config.model):  # a name only mamf can build: the base travels with it
            from mamf.models import load_model

            _export_hf(load_model(config.model), out / "base")
            written.append("base")
            base = "base"
        got = _embeddings(_load_peft(model, config, out, base), examples)
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
    _check_tokenizer(model, out)
    manifest = {"format": fmt, "run": str(run_dir), "model": config.model,
                "method": config.train.method, "adapter": config.train.adapter,
                "logit_scale": float(model.logit_scale().detach()),
                "parameters": _loss_parameters(model),
                "preprocessing": _preprocessing(model),
                "loss_parameters": {n: p.detach().flatten().tolist() for n, p in
                                    model.named_parameters()
                                    if any(p is q for q in model.loss_parameters())},
                "files": written,
                "checked_tolerance": TOLERANCE}
    if base is not None:
        manifest["base_model"] = base
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1))
    return [*written, MANIFEST]


def _builtin(name: str) -> bool:
    from mamf.models.registry import is_builtin

    return is_builtin(name)


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
    return {"pixels": model.preprocess(images), "tokens": model.tokenize(EXAMPLE_TEXTS)}


@torch.no_grad()
def _embeddings(model: DualEncoder, examples: dict) -> dict[str, torch.Tensor]:
    return {"image": model.encode_images(examples["pixels"]).float(),
            "text": model.encode_texts(examples["tokens"]).float()}


def _preprocessing(model: DualEncoder) -> dict:
    """What turns an image file and a prompt into the model's inputs, as mamf does it."""
    _, kwargs = model.text_tokenizer()
    return {"image_size": model.image_size, "resize": RESIZE, "rescale": 1 / 255,
            "image_mean": list(model.image_mean), "image_std": list(model.image_std),
            "text_padding": kwargs.get("padding", "longest"),
            "text_max_length": kwargs.get("max_length")}


def _loss_parameters(model: DualEncoder) -> dict[str, float]:
    """The loss's scalars (the temperature as `logit_scale`, SigLIP's `logit_bias`) under their
    names in the transformers model, for an adapter folder that cannot hold them."""
    if not isinstance(model, TransformersForm):
        return {}
    inner = model.transformers_model()
    return {name: float(p.detach()) for name, p in inner.named_parameters()
            if p.numel() == 1 and any(p is q for q in model.loss_parameters())}


def _prefix(model: DualEncoder) -> str:
    """The name of the transformers model inside the DualEncoder ("clip." for HFClip)."""
    inner = model.transformers_model()
    for name, module in model.named_modules():
        if module is inner:
            return f"{name}." if name else ""
    raise MamfError(f"{type(model).__name__}.transformers_model() is not one of its modules")


def _save_processor(model: DualEncoder, out: Path) -> None:
    """The tokenizer and a CLIP image processor set as mamf preprocesses (`mamf.data.cache.decode`:
    the shorter side to image_size, bicubic, then the centre crop; x / 255, then the model's
    mean and std), as `preprocessor_config.json` (what transformers 4 reads) and as the model
    type's processor (`processor_config.json`, which `AutoProcessor` finds even in a folder with
    no config.json, a peft folder's case). SigLIP's own image processor squashes instead of
    cropping, so a SigLIP export gets this one too, paired with SigLIP's tokenizer."""
    import transformers
    from transformers import CLIPImageProcessor
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    size = model.image_size
    image = CLIPImageProcessor(do_resize=True, size={"shortest_edge": size}, resample=3,  # bicubic
                               do_center_crop=True, crop_size={"height": size, "width": size},
                               do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                               image_mean=list(model.image_mean), image_std=list(model.image_std),
                               do_convert_rgb=True)
    tokenizer = model.text_tokenizer()[0]
    image.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    name = PROCESSOR_MAPPING_NAMES.get(model.transformers_model().config.model_type)
    if name and hasattr(transformers, name):
        getattr(transformers, name)(image_processor=image, tokenizer=tokenizer) \
            .save_pretrained(str(out))


def _check_tokenizer(model: DualEncoder, out: Path) -> None:
    """The saved tokenizer, called with the recorded settings, gives the run's ids."""
    from transformers import AutoTokenizer

    tokenizer_kwargs = model.text_tokenizer()[1]
    loaded = AutoTokenizer.from_pretrained(str(out))
    got = loaded(EXAMPLE_TEXTS, **tokenizer_kwargs, return_tensors="pt")["input_ids"]
    want = model.tokenize(EXAMPLE_TEXTS)["input_ids"].cpu()
    if got.shape != want.shape or not torch.equal(got, want):
        raise MamfError(f"the tokenizer saved in {out.name} gives other ids than the run's: "
                        "not exported")


def _export_hf(model: DualEncoder, out: Path) -> list[str]:
    model.transformers_model().save_pretrained(str(out), safe_serialization=True)
    _save_processor(model, out)
    return sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME)


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
    from peft.tuners.lora import LoraLayer
    from safetensors.torch import save_file

    prefix = _prefix(model)
    names = [n for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    heads = config.train.heads == "random"
    head_names = [n[len(prefix):] for n, m in model.named_modules()
                  if any(p is q for p in m.parameters(recurse=False)
                         for q in model.head_parameters())] if heads else []
    lora = LoraConfig(r=config.train.lora_rank, lora_alpha=config.train.lora_alpha,
                      lora_dropout=config.train.lora_dropout, bias="none",
                      target_modules=[n[len(prefix):] for n in names],
                      modules_to_save=head_names or None,
                      base_model_name_or_path="base" if _builtin(config.model) else config.model)
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
    _save_processor(model, out)
    return sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME)


def _load_peft(model: DualEncoder, config, out: Path, base: str) -> DualEncoder:
    """The base model as a user loads it (the export's `base/`, or the named base), the peft
    folder put on it by `PeftModel.from_pretrained`, the loss's scalars set from the manifest's
    values: the run's model as another library sees it, in a DualEncoder to embed with."""
    from peft import PeftModel

    from mamf.models import load_model

    pristine = load_model(config.model).eval()
    inner_cls = type(pristine.transformers_model())
    source = str(out / base) if (out / base).is_dir() else base
    inner = inner_cls.from_pretrained(source, use_safetensors=True).eval()
    peft_model = PeftModel.from_pretrained(inner, str(out)).eval()
    loaded = peft_model.base_model.model
    with torch.no_grad():
        for name, value in _loss_parameters(model).items():
            loaded.get_parameter(name).fill_(value)
    setattr(pristine, _prefix(pristine).rstrip("."), loaded)
    return pristine


def _export_onnx(model: DualEncoder, examples: dict, out: Path) -> list[str]:
    from mamf.features.frozen_engine import _export, _TextTower

    meta = {k: json.dumps(v) if not isinstance(v, str) else v
            for k, v in {**_preprocessing(model),
                         "logit_scale": float(model.logit_scale().detach()),
                         "tokenizer": "the tokenizer files in this folder "
                                      "(AutoTokenizer.from_pretrained)"}.items()}
    image = _export(_ImageTower(model), (examples["pixels"],),
                    {"pixel_values": {0: "batch"}})
    atomic_write_bytes(out / "image.onnx", _with_metadata(image, meta))
    tokens = examples["tokens"]
    names = list(tokens)
    text = _export(_TextTower(model, names), tuple(tokens.values()),
                   {n: {0: "batch", 1: "length"} for n in names})
    atomic_write_bytes(out / "text.onnx", _with_metadata(text, meta))
    model.text_tokenizer()[0].save_pretrained(str(out))
    return sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME)


def _with_metadata(graph: bytes, meta: dict[str, str]) -> bytes:
    """The graph with `meta` as its metadata_props (onnxruntime: `custom_metadata_map`)."""
    import onnx

    proto = onnx.load_from_string(graph)
    onnx.helper.set_model_props(proto, meta)
    return proto.SerializeToString()


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
