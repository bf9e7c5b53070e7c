"""The methods, each one file that registers itself (see `mamf.methods.base`).

Importing this package registers the built-in methods in the order tables list them.
"""

from mamf.methods import (  # noqa: F401  (registration)
    ape,
    clap,
    classical,
    cocoop,
    coop,
    fomaml,
    gda,
    linear_probe,
    lp_plus_plus,
    mamf,
    prolip,
    prototype,
    taskres,
    tip_adapter,
    zeroshot,
)
from mamf.methods.base import (
    EXTENSION,
    REGISTRY,
    Method,
    create,
    method_class,
    names,
    register,
)

__all__ = ["EXTENSION", "REGISTRY", "Method", "create", "method_class", "names", "register"]
