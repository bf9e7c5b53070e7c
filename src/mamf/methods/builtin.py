"""Importing this module registers every built-in method, in the order a config lists their
settings (tables order them by their records' `order`)."""

from mamf.methods import classical, mamf, fomaml, zeroshot  # noqa: F401, I001  (registration)
from mamf.methods import zs_probe, linear_probe_clip, prototype, tip_adapter, gda  # noqa: F401, I001
from mamf.methods import lp_plus_plus  # noqa: F401, I001
from mamf.methods import clap, taskres, prolip, ape, coop, cocoop  # noqa: F401, I001
