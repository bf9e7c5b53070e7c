"""The protocols, each one file that registers itself (see `mamf.protocols.base`).

Importing this package registers the built-in protocols in the order the CLI lists them.
"""

from mamf.protocols import paper, episodic, coop, base2novel  # noqa: F401, I001  (registration, in order)
from mamf.protocols.base import REGISTRY, Protocol, RowFields, get, names, register, settings

__all__ = ["REGISTRY", "Protocol", "RowFields", "get", "names", "register", "settings"]
