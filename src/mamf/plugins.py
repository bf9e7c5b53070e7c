"""The composition root: importing this module registers every built-in plug-in with the
settings catalogue (`mamf.catalogue`), in the order a config lists their settings.

Only entry points import it (the command line, the Python API, the runners of experiments and
tuning, the test suite); a plug-in never does, and neither does the catalogue or `mamf.config`,
so no module below the entry points depends on the set of plug-ins.
"""

from mamf import protocols  # noqa: F401  (registration)
from mamf.methods import builtin as methods  # noqa: F401
from mamf.models import registry as models  # noqa: F401
from mamf.tasks import samplers  # noqa: F401

__all__ = ["methods", "models", "protocols", "samplers"]
