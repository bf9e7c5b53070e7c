"""How tables, figures and `mamf methods` show each method: one record a method, kept apart from
the method's code so that a report can name and order methods without importing a model
framework (rendering a report from rows loads no torch)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Presentation:
    """A method's label and colour in tables and figures, its place in them (`order`), one line
    for `mamf methods`, and which settings are its training and test-time rates and epochs (None:
    it has none), which the report's Setup block states for a paper."""

    label: str
    description: str
    colour: str = "#7f7f7f"
    order: int = 100
    train_rate: str | None = "train.lr"
    adapt_rate: str | None = "metatest.lr"
    adapt_epochs: str | None = "metatest.epochs"
    # a rate of its training besides `train_rate` (FOMAML's inner SGD rate): symmetric tuning
    # tunes every rate a method declares
    inner_rate: str | None = None
    adapt_optimizer: str = "Adam"  # what its test-time adaptation steps with (the caveats)


CLOSED_FORM = {"adapt_rate": None, "adapt_epochs": None}

# the built-in methods' records, by name; a method registered at run time brings its own
BUILTIN: dict[str, Presentation] = {
    "zeroshot": Presentation("zero-shot", "the pretrained model, no training, no test-time "
                             "adaptation", "#9e9e9e", 0, **CLOSED_FORM),
    "classical": Presentation("classical FT", "minibatch fine-tuning on the whole training pool, "
                              "loss over all N classes", "#1f77b4", 1),
    "mamf": Presentation("MAMF", "fine-tuning on n-way tasks drawn by train.sampler, loss over "
                         "the task's n classes", "#d62728", 2),
    "fomaml": Presentation("FOMAML", "first-order MAML: inner SGD on each task's support set, "
                           "outer Adam on its query loss", "#2ca02c", 3,
                           adapt_rate="metatest.inner_lr", adapt_epochs="metatest.inner_epochs",
                           inner_rate="train.inner_lr", adapt_optimizer="SGD"),
    "prototype": Presentation("prototype", "nearest support class mean, mixed with the prompt "
                              "embedding (baseline)", "#8c564b", 10, **CLOSED_FORM),
    "linear-probe-clip": Presentation("Linear-probe CLIP", "CoOp's linear probe: logistic "
                                      "regression on raw image features, C on dev (baseline)",
                                      "#f7b6d2", 9, **CLOSED_FORM),
    "zs-probe": Presentation("ZS-init probe", "mamf's probe: Adam steps on unit image embeddings "
                             "from the prompt embeddings (baseline)", "#e377c2", 11,
                             adapt_rate="baseline.probe_lr", adapt_epochs=None),
    "tip-adapter": Presentation("Tip-Adapter", "training-free cache of support embeddings; "
                                "alpha, beta chosen on dev (baseline)", "#17becf", 12,
                                **CLOSED_FORM),
    "tip-adapter-f": Presentation("Tip-Adapter-F", "Tip-Adapter with cache keys fine-tuned on the "
                                  "support set (baseline)", "#bcbd22", 13,
                                  adapt_rate="baseline.tip_f_lr",
                                  adapt_epochs="baseline.tip_f_epochs", adapt_optimizer="AdamW"),
    "gda": Presentation("GDA", "Gaussian discriminant on support embeddings beside zero-shot; "
                        "alpha on dev (baseline)", "#393b79", 14, **CLOSED_FORM),
    "lp++": Presentation("LP++", "linear probe blended class-wise with the text embeddings, "
                         "data-driven steps (baseline)", "#637939", 15, adapt_rate=None,
                         adapt_epochs="baseline.lpp_epochs"),
    "clap": Presentation("CLAP", "zero-shot-initialised linear probe held near the prompts, "
                         "class-wise (baseline)", "#8c6d31", 16, adapt_rate="baseline.clap_lr",
                         adapt_epochs="baseline.clap_epochs", adapt_optimizer="SGD"),
    "zs-lp": Presentation("ZS-LP", "CLAP's zero-shot-initialised linear probe without the "
                          "constraint (baseline)", "#bd9e39", 17, adapt_rate="baseline.clap_lr",
                          adapt_epochs="baseline.clap_epochs", adapt_optimizer="SGD"),
    "taskres": Presentation("TaskRes", "a learned residual on the prompts' text classifier "
                            "(baseline)", "#843c39", 18, adapt_rate="baseline.taskres_lr",
                            adapt_epochs="baseline.taskres_epochs"),
    "ape": Presentation("APE", "Tip-Adapter's cache on refined channels, values weighted by "
                        "zero-shot (baseline)", "#7b4173", 19, **CLOSED_FORM),
    "prolip": Presentation("ProLIP", "fine-tunes only the image projection, held near its "
                           "pretrained weights (baseline)", "#5254a3", 20,
                           adapt_rate="baseline.prolip_lr", adapt_epochs="baseline.prolip_epochs"),
    "coop": Presentation("CoOp", "a learned prompt context in front of the class names; the "
                         "towers frozen (baseline)", "#ff7f0e", 21, train_rate="baseline.coop_lr",
                         **CLOSED_FORM),
    "cocoop": Presentation("CoCoOp", "CoOp's context shifted per image by a meta-net (baseline)",
                           "#9edae5", 22, train_rate="baseline.cocoop_lr", **CLOSED_FORM),
}

# every method's record, the built-in ones and those registered since (`methods.base.register`)
SHOWN: dict[str, Presentation] = dict(BUILTIN)


def of(method: str) -> Presentation | None:
    """`method`'s record; None for a name no method has (an older row's, say)."""
    return SHOWN.get(method)


def ordered() -> list[str]:
    """Every method with a record, in table order."""
    return sorted(SHOWN, key=lambda name: (SHOWN[name].order, name))
