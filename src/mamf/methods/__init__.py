"""The methods: one file each (see `mamf.methods.base`), with a table record in
`presentation.py` (how reports show it).

Importing this package, or `presentation`, loads no model framework: a report names and orders
methods from the records alone. The registry's functions and classes (`method_class`, `create`,
`names`, `TrainedMethod`, ...) are taken from `mamf.methods.base` when first asked, after every built-in
method has registered itself (`mamf.methods.builtin`).
"""

from __future__ import annotations

import importlib

_REGISTRY_API = ("EXTENSION", "REGISTRY", "Method", "TestTimeMethod", "TrainedMethod",
                 "check_model", "create", "method_class", "names", "rates", "register",
                 "settings")
__all__ = list(_REGISTRY_API)


def __getattr__(name: str):
    if name in _REGISTRY_API:
        importlib.import_module("mamf.methods.builtin")  # registers the built-in methods
        return getattr(importlib.import_module("mamf.methods.base"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
