"""The task sizes a run scores: one n, a list, `all` (the paper's sweep), or the protocol's
only size (all-way protocols)."""

from __future__ import annotations

from mamf import protocols
from mamf.catalogue import AT_MOST, Config
from mamf.system.errors import MamfError, shown


def ways_list(config: Config, n_classes: int, value) -> list[int]:
    """`ways` may be one n, a list, or 'all' (n = start_n .. N-1, the paper's sweep). The coop
    and base2novel protocols classify all N classes at once: their only size is N."""
    if protocols.get(config.data.protocol).all_way:
        if n_classes < 2:  # a 1-way task has one answer: its rows would say 1.000
            raise MamfError(f"the {config.data.protocol} protocol classifies all the data's "
                            f"classes at once: it needs at least 2, the data has {n_classes}")
        if value not in (None, "") and str(value).strip().lower() not in ("all", "paper",
                                                                           str(n_classes)):
            raise MamfError(f"the {config.data.protocol} protocol classifies all {n_classes} "
                            f"classes at once: drop --ways (got {shown(value)})")
        return [n_classes]
    if value in (None, ""):
        return [config.data.ways]
    if isinstance(value, str) and value.strip().lower() in ("all", "paper"):
        top = n_classes - 1
        if config.data.start_n > top:
            raise MamfError(f"start_n={config.data.start_n} leaves no task size below N={n_classes}")
        return list(range(config.data.start_n, top + 1))
    items = value if isinstance(value, list) else str(value).split(",")
    try:
        out = [int(v) for v in items]
    except ValueError:
        raise MamfError(f"--ways must be integers, a comma list, or 'all'; got "
                        f"{shown(value)}") from None
    top = AT_MOST["data.ways"]
    if any(not 2 <= w <= top for w in out):
        raise MamfError(f"ways must be between 2 and {top}, got {shown(value)}")
    return out

