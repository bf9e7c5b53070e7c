"""Hypotheses declared in an experiment file before it runs (docs/method.md, "Declared
hypotheses").

A study that chooses its tests after seeing its numbers can find a "holds" in any large enough
table. An experiment file's `hypotheses:` section names, in advance, the comparisons the study
is for:

    hypotheses:
      claim1: {compare: [mamf, classical], expect: greater}            # a - b > 0, per dataset
      claim2: {compare: [mamf, fomaml], expect: falls, along: zeroshot} # slope of a - b

`expect: greater` or `less` tests a - b on each dataset both ran (or on those `datasets:` lists);
`expect: rises` or `falls` with `along: <method>` tests the slope of a - b against that method's
accuracy on each dataset (`along: zeroshot`: the datasets' zero-shot accuracy). The report's
first section tests exactly these, Holm over all of them, and calls every other comparison
exploratory. Every row records `hypotheses_sha256`, the hash of the
section as the rows were computed, so a hypothesis added after the fact shows.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass

from mamf.system.errors import MamfError, shown

PAIRWISE = ("greater", "less")
TRENDS = ("rises", "falls")
KEYS = {"compare", "expect", "along", "datasets"}
NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True)
class Hypothesis:
    name: str
    a: str
    b: str
    expect: str  # greater, less (per dataset), rises, falls (a trend)
    along: str | None = None  # the method whose accuracy per dataset a trend runs along
    datasets: tuple[str, ...] | None = None  # None: every dataset both methods ran

    @property
    def trend(self) -> bool:
        return self.expect in TRENDS

    @property
    def sign(self) -> int:
        """+1 where the hypothesis expects a positive a - b (or slope), -1 a negative one."""
        return 1 if self.expect in ("greater", "rises") else -1

    def text(self) -> str:
        """The hypothesis in words, as the report states it."""
        if self.trend:
            return f"{self.a} − {self.b} {self.expect} with {self.along}'s accuracy"
        where = f" on {', '.join(self.datasets)}" if self.datasets else " on each dataset"
        return f"{self.a} − {self.b} is {'above' if self.sign > 0 else 'below'} 0{where}"


def parse_hypotheses(raw, methods: list[str], datasets: list[str]) -> list[Hypothesis]:
    """The `hypotheses:` section, checked against the experiment's methods and datasets."""
    if raw is None:
        return []
    if not isinstance(raw, dict) or not raw:
        raise MamfError(f"experiment 'hypotheses' must map names to hypotheses, got {shown(raw)}")
    found = []
    for name, h in raw.items():
        where = f"hypotheses.{shown(name)}"
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise MamfError(f"{where}: a hypothesis's name must be letters, digits, '.', '-', '_'")
        if not isinstance(h, dict) or set(h) - KEYS:
            raise MamfError(f"{where} must be a mapping of {', '.join(sorted(KEYS))}")
        pair = h.get("compare")
        if not isinstance(pair, list) or len(pair) != 2 or pair[0] == pair[1] or \
                any(m not in methods for m in pair):
            raise MamfError(f"{where}.compare must name two of the experiment's methods, got "
                            f"{shown(pair)}")
        expect, along = h.get("expect"), h.get("along")
        if expect not in PAIRWISE + TRENDS:
            raise MamfError(f"{where}.expect must be one of {', '.join(PAIRWISE + TRENDS)}, got "
                            f"{shown(expect)}")
        if (expect in TRENDS) != (along is not None):
            raise MamfError(f"{where}: 'rises' and 'falls' need 'along' (a method, e.g. "
                            "zeroshot), and only they take it")
        if along is not None and along not in methods:
            raise MamfError(f"{where}.along must name a method of the experiment (zeroshot: "
                            f"along the datasets' zero-shot accuracy), got {shown(along)}")
        chosen = h.get("datasets")
        if chosen is not None and (not isinstance(chosen, list) or not chosen or
                                   any(d not in datasets for d in chosen)):
            raise MamfError(f"{where}.datasets must list datasets of the experiment, got "
                            f"{shown(chosen)}")
        if expect in TRENDS and chosen is not None and len(chosen) < 3:
            raise MamfError(f"{where}: a trend needs at least 3 datasets")
        found.append(Hypothesis(name, pair[0], pair[1], expect, along,
                                tuple(chosen) if chosen is not None else None))
    return found


def digest(hypotheses: list[Hypothesis]) -> str | None:
    """sha256 of the hypotheses as parsed, names included, in name order (writing them in
    another order declares the same); None for none declared."""
    if not hypotheses:
        return None
    text = json.dumps(sorted((asdict(h) for h in hypotheses), key=lambda h: h["name"]),
                      sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
