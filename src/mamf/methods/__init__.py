"""The methods, each one file that registers itself (see `mamf.methods.base`).

Importing this package registers the built-in methods. Tables list them by their `order`; the
registration order below is the order in which a config lists their settings.
"""

from mamf.methods import classical, mamf, fomaml, zeroshot  # noqa: F401, I001  (registration)
from mamf.methods import linear_probe, prototype, tip_adapter, gda, lp_plus_plus  # noqa: F401, I001
from mamf.methods import clap, taskres, prolip, ape, coop, cocoop  # noqa: F401, I001
from mamf.methods.base import (
    EXTENSION,
    REGISTRY,
    Method,
    create,
    method_class,
    names,
    rates,
    register,
    settings,
)

__all__ = ["EXTENSION", "REGISTRY", "Method", "create", "method_class", "names", "rates",
           "register", "settings"]
