"""Dual encoders behind one interface; `load_model(name)` is the only entry point callers need."""

from mamf.models.base import DualEncoder
from mamf.models.registry import load_model, model_names

__all__ = ["DualEncoder", "load_model", "model_names"]
