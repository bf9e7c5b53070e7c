"""mamf: few-shot transfer of vision-language models by model-agnostic multitask fine-tuning.

The Python API (`train`, `evaluate`, `load_run`, `report`, `classify`, `make_config`, `Run`,
`Config`) is imported on first use, so `import mamf` stays light and changes nothing
process-wide: glibc's malloc tuning is the CLI's, or a script's explicit
`mamf.keep_freed_memory()`.
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

_API = {"train": "mamf.api", "evaluate": "mamf.api", "load_run": "mamf.api",
        "report": "mamf.api", "classify": "mamf.api", "predict": "mamf.api",
        "make_config": "mamf.api", "Run": "mamf.api", "Config": "mamf.catalogue",
        "keep_freed_memory": "mamf.system.allocator"}
__all__ = [*_API, "__version__"]


def __getattr__(name: str):
    """PEP 562: the API's names resolve when first asked for (torch is not imported before)."""
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'mamf' has no attribute {name!r}")


class _Package(types.ModuleType):
    """`mamf.report` is both a submodule and the API's function: importing the submodule would
    rebind the name to it, so the API's names keep their function (`mamf.report` the module
    stays reachable as `sys.modules["mamf.report"]` and through `from mamf.report import ...`)."""

    def __setattr__(self, name: str, value) -> None:
        if name in _API and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
