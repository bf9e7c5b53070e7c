"""The method interfaces (`mamf.methods.base`): what a method does is said by the interfaces it
implements, `adapt` returns the task's scorer and keeps nothing of the task, and a method reads
only the plug-in settings it declares."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch

from mamf import methods
from mamf.config import build_config
from mamf.engine.metatest import evaluation_tasks, meta_test
from mamf.methods.base import TrainedMethod
from mamf.methods.coop import Prompted, context_of
from mamf.methods.scorer import Scorer
from mamf.runs.experiment_file import parse_experiment
from mamf.runs.prepare import prepare

# small enough that every method adapts in a moment on the tiny model
SMALL = {"model": "tiny-random-clip", "train.freeze_image_backbone": True,
         "train.freeze_text_tower": True, "data.ways": 3, "metatest.epochs": 1,
         "metatest.inner_epochs": 1, "baseline.lpp_epochs": 2, "baseline.clap_epochs": 2,
         "baseline.taskres_epochs": 2, "baseline.taskres_epochs_low_shot": 2,
         "baseline.prolip_epochs": 2, "baseline.tip_f_epochs": 2, "baseline.probe_steps": 2,
         "baseline.tip_search_step": [4, 4], "baseline.ape_search_step": [3, 3, 3],
         "baseline.lpclip_steps": 1}
# the methods that train on the training pool, and those an experiment runs only when named
TRAINED = {"classical", "mamf", "fomaml", "coop", "cocoop"}
NAMED_ONLY = {"zs-probe", "linear-probe-clip", "prototype", "tip-adapter", "tip-adapter-f", "gda",
              "lp++", "clap", "zs-lp", "taskres", "ape", "prolip", "coop", "cocoop"}
RETIRED = ("trains", "baseline", "extend", "predict", "score")


def test_every_method_says_what_it_does_by_the_interfaces_it_implements():
    for name in methods.names():
        cls = methods.method_class(name)
        assert issubclass(cls, methods.TestTimeMethod), name
        assert issubclass(cls, TrainedMethod) == (name in TRAINED), name
        assert cls.only_when_named == (name in NAMED_ONLY), name
        assert not [a for a in RETIRED if hasattr(cls, a)], name
    assert set(methods.names(trained=True)) == TRAINED
    defaults = parse_experiment({"name": "x", "datasets": {"d": {"root": "/nowhere"}}}).methods
    assert defaults == ["zeroshot", "classical", "mamf", "fomaml"]


def test_a_method_that_meets_no_test_task_is_not_registered():
    class Trains(TrainedMethod):
        name = "trains-only"

    with pytest.raises(ValueError, match="must be a TestTimeMethod"):
        methods.register(Trains)
    assert "trains-only" not in methods.REGISTRY


@pytest.fixture(scope="module")
def prepared(shared_colour_folder):
    config = build_config(overrides={**SMALL, "data.root": str(shared_colour_folder)})
    model, dataset, inputs = prepare(config)
    return config, model, dataset, inputs


@contextlib.contextmanager
def restored(model):
    """The model as it was, after the block: its weights, and no method's module on it."""
    with torch.no_grad():
        saved = [p.clone() for p in model.parameters()]
    try:
        yield
    finally:
        with torch.no_grad():
            for p, s in zip(model.parameters(), saved):
                p.copy_(s)
        if hasattr(model, methods.EXTENSION):
            delattr(model, methods.EXTENSION)


def ready(name: str, config, model, inputs, dataset) -> methods.TestTimeMethod:
    """The method as the meta-test meets it: its trained module on the model, tuned on dev."""
    method = methods.method_class(name)(config)
    if isinstance(method, TrainedMethod):
        method.add_to_model(model, inputs)
    if method.tunes_on_dev:
        method.tune(model, inputs, evaluation_tasks(dataset, config, "dev", 3)[:2])
    return method


@pytest.mark.parametrize("name", methods.names())
def test_adapting_to_a_task_leaves_nothing_of_it_on_the_method(prepared, name):
    config, model, dataset, inputs = prepared
    tasks = evaluation_tasks(dataset, config, "test", 3)[:2]
    with restored(model):
        method = ready(name, config, model, inputs, dataset)
        first = method.adapt(model, inputs, tasks[0], np.random.default_rng(0))
        assert isinstance(first, Scorer)
        before = dict(vars(method))  # caches kept for every task are filled by now
        second = method.adapt(model, inputs, tasks[1], np.random.default_rng(1))
        after = vars(method)
        assert after.keys() == before.keys()
        assert all(after[k] is before[k] for k in before), \
            [k for k in before if after[k] is not before[k]]
        given = second.predict()
        assert given.shape == (len(tasks[1].query),) and given.dtype == np.int64


class Reads:
    """A config section that notes every setting read from it."""

    def __init__(self, section, name: str, seen: set[str]):
        self._section, self._name, self._seen = section, name, seen

    def __getattr__(self, key: str):
        self._seen.add(f"{self._name}.{key}")
        return getattr(self._section, key)


class ReadConfig:
    """A config whose sections note what is read from them."""

    def __init__(self, config, seen: set[str]):
        self._config, self._seen = config, seen

    def __getattr__(self, key: str):
        value = getattr(self._config, key)
        return Reads(value, key, self._seen) if key in ("data", "train", "metatest",
                                                        "baseline") else value


@pytest.mark.parametrize("name", methods.names())
def test_a_method_reads_only_the_plug_in_settings_it_declares(prepared, name):
    """At test time (and, for a trained method, as its module joins the model). Tip-Adapter
    read Tip-Adapter-F's baseline.tip_f_alpha and .tip_f_beta."""
    config, model, dataset, inputs = prepared
    cls = methods.method_class(name)
    plug_ins = {s.key for c in methods.REGISTRY.values() for s in c.settings}
    seen: set[str] = set()
    with restored(model):
        method = ready(name, ReadConfig(config, seen), model, inputs, dataset)
        task = evaluation_tasks(dataset, config, "test", 3)[0]
        method.adapt(model, inputs, task, np.random.default_rng(0)).predict()
    own = {s.key for s in cls.settings}
    assert seen & plug_ins <= own, sorted(seen & plug_ins - own)


def test_tip_adapter_starts_from_the_official_alpha_and_beta_whatever_tip_adapter_f_is_set_to():
    config = build_config(overrides={"baseline.tip_f_alpha": 5.0, "baseline.tip_f_beta": 2.0})
    plain, fine = methods.create("tip-adapter", config), methods.create("tip-adapter-f", config)
    assert (plain.alpha, plain.beta) == (1.17, 1.0)
    assert (fine.alpha, fine.beta) == (5.0, 2.0)


def test_a_trained_prompt_context_is_what_scores_the_meta_test(shared_colour_folder):
    """The meta-test classifies CoOp's query images against the prompts with its learned
    context (before, it scored the plain prompts, as zero-shot, and the context went unused)."""
    config = build_config(overrides={**SMALL, "data.root": str(shared_colour_folder),
                                     "train.method": "coop"})
    model, dataset, inputs = prepare(config)
    method = methods.create("coop", config)
    method.add_to_model(model, inputs)
    context = context_of(model)
    with torch.no_grad():  # a context far from the init words' embeddings
        context.vectors.copy_(torch.randn(context.vectors.shape,
                                          generator=torch.Generator().manual_seed(0)))
    tasks = evaluation_tasks(dataset, config, "test", 3)
    expected = []
    prompted = Prompted(model, context, method.make_prompts(model, inputs))
    with torch.no_grad():
        for task in tasks:
            logits = method.logits(prompted, inputs.images(model, task.query), task.classes)
            expected.append(float((logits.argmax(1).numpy() == task.query_labels).mean()))
    zero = meta_test(model, inputs, tasks, "zeroshot", config, 3, progress=False)
    assert expected != zero  # the context changes what is predicted
    assert meta_test(model, inputs, tasks, method, config, 3, progress=False) == \
        pytest.approx(expected, abs=1e-12)


def test_the_documented_method_runs_as_written(prepared, monkeypatch):
    """docs/architecture.md's example method registers, and its scorer is the nearest shrunk
    prototype: at shrunk_weight 1 the prompts alone, so zero-shot's accuracies exactly."""
    text = (Path(__file__).parents[1] / "docs" / "architecture.md").read_text()
    source = text.split("```python\n")[1].split("```")[0]
    assert "class Shrunk(TestTimeMethod)" in source
    config, model, dataset, inputs = prepared
    namespace = {"__name__": "shrunk_example"}
    exec(compile(source, "docs/architecture.md", "exec"), namespace)
    try:
        assert methods.method_class("shrunk").only_when_named
        config = build_config(overrides={**SMALL, "data.root": config.data.root,
                                         "baseline.shrunk_weight": 1.0})
        tasks = evaluation_tasks(dataset, config, "test", 3)
        shrunk = meta_test(model, inputs, tasks, "shrunk", config, 3, progress=False)
        assert shrunk == meta_test(model, inputs, tasks, "zeroshot", config, 3, progress=False)
    finally:
        methods.base.unregister("shrunk")
