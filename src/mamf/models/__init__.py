"""Dual encoders behind one interface; `load_model(name)` is the only entry point callers need.

Importing this package registers the built-in families, each one file that registers itself.
"""

from mamf.models import hf_clip, siglip, tiny  # noqa: F401  (registration)
from mamf.models.base import DualEncoder
from mamf.models.registry import load_model, model_names

__all__ = ["DualEncoder", "load_model", "model_names"]
