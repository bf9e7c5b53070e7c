"""An experiment's `tune:` section, read and checked (`mamf.runs.tune` runs it; docs/method.md,
"Tuning"): a seed that is none of the test seeds, a grid of dotted `train.*` / `metatest.*`
keys, optional per-method grids, task sizes and dev-only settings.

Tuning is symmetric unless the file says why not (`asymmetric: <reason>`): a comparison whose
methods were tuned unequally measures the tuning as much as the methods. Symmetric means at
least two tune seeds, every method that trains tuned, and every rate a method declares
(`mamf.methods.rates`: training, FOMAML's inner rate, the test-time rate) in its grid on every
dataset it runs. `retune: <reason>` is what allows tuning again after test rows exist
(`mamf.runs.tune`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mamf import methods as registry
from mamf.catalogue import check_seed
from mamf.system.errors import MamfError, shown

TUNE_KEYS = {"seed", "ways", "grid", "method_grid", "methods", "settings", "asymmetric",
             "retune"}
MIN_SEEDS = 2  # tune seeds symmetric tuning needs: one seed's lucky rate is not a choice
SECTIONS = ("train", "metatest")


@dataclass
class TuneSpec:
    seed: int | list[int]  # several: each point trains once per seed, its dev accuracy their mean
    grid: dict[str, list]  # dotted key -> values, in grid order
    method_grid: dict[str, dict[str, list]] = field(default_factory=dict)
    methods: list[str] | None = None  # None: the experiment's methods that train
    ways: list[int] | None = None  # None: each dataset's first task size
    settings: dict = field(default_factory=dict)  # for the dev runs only (e.g. fewer dev tasks)
    # dataset name -> its own {"grid", "method_grid"} (a dataset entry's `tune:`), each where given
    dataset_grids: dict[str, dict] = field(default_factory=dict)
    asymmetric: str | None = None  # why this study tunes asymmetrically (None: it does not)
    retune: str | None = None  # why it tunes again after test rows exist (None: refused)

    @property
    def seeds(self) -> list[int]:
        return self.seed if isinstance(self.seed, list) else [self.seed]

    def grid_of(self, method: str, dataset: str | None = None) -> dict[str, list]:
        """The method's own grid where `method_grid` names it (FOMAML's test-time rate is
        `metatest.inner_lr`), else the shared one; a dataset's own `grid` and `method_grid`
        replace the experiment's for that dataset."""
        own = self.dataset_grids.get(dataset, {})
        return own.get("method_grid", self.method_grid).get(method, own.get("grid", self.grid))

    def methods_of(self, exp_methods: list[str]) -> list[str]:
        if self.methods is not None:
            return self.methods
        return [m for m in exp_methods
                if issubclass(registry.method_class(m), registry.TrainedMethod)]


def parse_tune(raw, exp_methods: list[str], seeds: list[int], fixed=frozenset()) -> TuneSpec:
    """The `tune:` section, checked; `fixed`: the settings the prepared model depends on, which
    a grid may not vary."""
    if not isinstance(raw, dict):
        raise MamfError(f"experiment 'tune' must be a mapping, got {shown(raw)}")
    unknown = set(raw) - TUNE_KEYS
    if unknown:
        raise MamfError(f"experiment 'tune' has unknown key(s) {', '.join(map(shown, unknown))} "
                        f"(known: {', '.join(sorted(TUNE_KEYS))})")
    seed = raw.get("seed")
    several = seed if isinstance(seed, list) else [seed]
    if not several or not all(isinstance(s, int) and not isinstance(s, bool) for s in several) \
            or len(set(several)) < len(several):
        raise MamfError("experiment 'tune' needs a 'seed': an integer, or a list of distinct "
                        "ones, none of the 'seeds'")
    for one in several:
        check_seed("tune.seed", one)
        if one in seeds:
            raise MamfError(f"tune.seed {one} is one of the experiment's seeds: rates chosen on "
                            "it would be scored by the run that chose them; pick another seed")
    grid = _grid(raw.get("grid"), "tune.grid", fixed)
    per = raw.get("method_grid") or {}
    if not isinstance(per, dict) or any(m not in registry.names() for m in per):
        raise MamfError("tune.method_grid must map method names to grids")
    method_grid = {m: _grid(g, f"tune.method_grid.{m}", fixed) for m, g in per.items()}
    chosen = raw.get("methods")
    if chosen is not None and (not isinstance(chosen, list) or
                               any(m not in exp_methods for m in chosen)):
        raise MamfError(f"tune.methods must list methods of the experiment, got {shown(chosen)}")
    ways = raw.get("ways")
    if ways is not None:
        ways = [ways] if isinstance(ways, int) else ways
        if not isinstance(ways, list) or not ways or \
                not all(isinstance(n, int) and n >= 2 for n in ways):
            raise MamfError(f"tune.ways must be task sizes, got {shown(raw.get('ways'))}")
    settings = raw.get("settings") or {}
    if not isinstance(settings, dict):
        raise MamfError("tune.settings must be a mapping of config sections")
    reasons = {}
    for key in ("asymmetric", "retune"):
        value = raw.get(key)
        if value is not None and (not isinstance(value, str) or len(value.strip()) < 10):
            raise MamfError(f"tune.{key} must say why, in a sentence, got {shown(value)}")
        reasons[key] = value.strip() if value else None
    spec = TuneSpec(seed, grid, method_grid, chosen, ways, settings, **reasons)
    if not any(spec.grid_of(m) for m in spec.methods_of(exp_methods)):
        raise MamfError("experiment 'tune' has an empty grid: give tune.grid (e.g. train.lr)")
    return spec


def check_symmetric(spec: TuneSpec, exp_methods: list[str],
                    datasets: dict[str, list[str] | None]) -> None:
    """Refuse asymmetric tuning unless `tune.asymmetric` says why; `datasets`: each dataset's
    methods (None: all of the experiment's)."""
    if spec.asymmetric:
        return
    why = " (or say why not in tune.asymmetric)"
    if len(spec.seeds) < MIN_SEEDS:
        raise MamfError(f"tune: symmetric tuning needs at least {MIN_SEEDS} tune seeds (a list "
                        f"in tune.seed), got {len(spec.seeds)}{why}")
    trained = [m for m in exp_methods
               if issubclass(registry.method_class(m), registry.TrainedMethod)]
    left = [m for m in trained if m not in spec.methods_of(exp_methods)]
    if left:
        raise MamfError(f"tune: every method that trains is tuned, and tune.methods leaves out "
                        f"{', '.join(left)}{why}")
    for name, runs in datasets.items():
        for m in spec.methods_of(exp_methods):
            if runs is not None and m not in runs:
                continue
            grid = spec.grid_of(m, name)
            missing = [r for r in registry.rates(m)
                       if r.split(".")[0] in SECTIONS and r not in grid]
            if missing:
                raise MamfError(f"tune: {m}'s grid on {name} lacks {', '.join(missing)}: "
                                f"symmetric tuning tunes every rate a method has{why}")


def parse_dataset_grids(raw: dict, dataset: str, fixed=frozenset()) -> dict:
    """A dataset entry's `tune:` (only `grid` and `method_grid`: the seed, task sizes and dev
    settings are the experiment's), checked as the experiment's are."""
    unknown = set(raw) - {"grid", "method_grid"}
    if unknown or not raw:
        raise MamfError(f"dataset {dataset!r}: 'tune' takes 'grid' and 'method_grid' only, got "
                        f"{', '.join(map(shown, sorted(raw, key=str))) or 'neither'}")
    own = {}
    if "grid" in raw:
        own["grid"] = _grid(raw["grid"], f"datasets.{dataset}.tune.grid", fixed)
    if "method_grid" in raw:
        per = raw["method_grid"]
        if not isinstance(per, dict) or any(m not in registry.names() for m in per):
            raise MamfError(f"datasets.{dataset}.tune.method_grid must map method names to grids")
        own["method_grid"] = {m: _grid(g, f"datasets.{dataset}.tune.method_grid.{m}", fixed)
                              for m, g in per.items()}
    return own


def _grid(raw, where: str, fixed) -> dict[str, list]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise MamfError(f"{where} must map dotted keys (train.lr, metatest.lr) to lists")
    for key, values in raw.items():
        if not isinstance(key, str) or key.split(".")[0] not in SECTIONS or "." not in key:
            raise MamfError(f"{where}: {shown(key)} is not a train.* or metatest.* key")
        if key.split(".", 1)[1] in fixed:
            raise MamfError(f"{where}: {key} changes the prepared model; tune rates, not it")
        if not isinstance(values, list) or not values:
            raise MamfError(f"{where}.{key} must be a non-empty list of values")
    return dict(raw)


def nested(dotted: dict) -> dict:
    """{'train.lr': x} -> {'train': {'lr': x}}, as experiment settings are written."""
    out: dict = {}
    for key, value in dotted.items():
        section, name = key.split(".", 1)
        out.setdefault(section, {})[name] = value
    return out
