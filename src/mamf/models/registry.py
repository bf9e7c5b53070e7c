"""Model names -> DualEncoders: one `load_model` for every family (timm's `create_model` idea)."""

from __future__ import annotations

from mamf.errors import MamfError
from mamf.models.base import DualEncoder

BUILTIN = {
    "tiny-random-clip": "small randomly initialised CLIP built in code (UNTRAINED; tests, smoke runs)",
    "effnet-minilm": "offline pretrained EfficientNet-Lite0 + all-MiniLM-L6-v2, ConSE-joined "
                     "(needs the [offline] extra)",
}


def model_names() -> dict[str, str]:
    return dict(BUILTIN)


def load_model(name: str) -> DualEncoder:
    """Build a model by built-in name, local CLIPModel folder, or hub id (needs network)."""
    if not name:
        raise MamfError("no model given: pass --model (e.g. effnet-minilm or a CLIP folder)")
    if name == "tiny-random-clip":
        from mamf.models.tiny import build

        return build()
    if name == "effnet-minilm":
        try:
            from mamf.models.effnet_minilm import build as build_effnet
        except ImportError:
            raise MamfError("effnet-minilm needs the offline extra: pip install -e '.[offline]'") \
                from None
        return build_effnet()
    from mamf.models.hf_clip import load_hf_clip

    if "/" not in name and "\\" not in name and not name.startswith("."):
        known = ", ".join(BUILTIN)
        raise MamfError(f"unknown model {name!r}: use one of {known}, a CLIP model folder, "
                        "or a hub id such as openai/clip-vit-base-patch32")
    return load_hf_clip(name)
