"""Which rows each part of the report reads: filters named for what they keep, and `main_rows`,
their composition, the rows of the accuracy table (in report.md and in the terminal alike).

    main_rows(rows) == pooling(one_measurement(uniform_sampling(rows)))

Rows the main table leaves out are read elsewhere: other samplers under "Samplers against
uniform", training-split rows and other WiSE-FT alphas under the overfitting sections, and rows
of a protocol whose tasks do not pool (base2novel) in that protocol's own table.
"""

from __future__ import annotations

from mamf import protocols
from mamf.results import Row
from mamf.tasks import DEFAULT_SAMPLER as UNIFORM


def uniform_sampling(rows: list[Row]) -> list[Row]:
    """Rows of uniform task sampling where a method ran with it beside other samplers; a method
    that ran with one other sampler only keeps its rows, and methods that draw no tasks keep
    theirs."""
    with_uniform = {(r.dataset_name, r.method) for r in rows if r.sampler == UNIFORM}
    return [r for r in rows if r.sampler in (None, UNIFORM)
            or (r.dataset_name, r.method) not in with_uniform]


def held_out(rows: list[Row]) -> list[Row]:
    """Rows scored on held-out tasks (the dev or test split); every row where all of them were
    scored on the training split."""
    return [r for r in rows if r.split != "train"] or rows


def unmixed(rows: list[Row]) -> list[Row]:
    """One measurement of the trained weights per key: the unmixed row (WiSE-FT alpha None),
    or the alpha-1 row (the same weights) where there is no unmixed one."""
    plain = {r.key for r in rows if r.alpha is None}
    return [r for r in rows if r.alpha is None or
            (float(r.alpha) == 1.0 and r.key.without("alpha") not in plain)]


def one_measurement(rows: list[Row]) -> list[Row]:
    """Held-out rows of the trained weights, one measurement per key (`held_out`, `unmixed`):
    what every comparison of methods reads."""
    return unmixed(held_out(rows))


def pooling(rows: list[Row]) -> list[Row]:
    """Rows of protocols whose test tasks pool into the method tables (`Protocol.pools_tasks`);
    base2novel's two tasks (base, novel) are summarised by their harmonic mean instead."""
    return [r for r in rows if protocols.get(r.protocol).pools_tasks]


def main_rows(rows: list[Row]) -> list[Row]:
    """The rows of the accuracy table (and the summary figure, the claims and the other
    comparisons of methods)."""
    return pooling(one_measurement(uniform_sampling(rows)))
