"""CoOp (Zhou, Yang, Loy and Liu, "Learning to Prompt for Vision-Language Models", IJCV 2022):
the class prompt is "[V]_1 ... [V]_M <class name>.", the M context vectors [V] are learned in the
text tower's input embedding space, and nothing else changes (docs/method.md, "CoOp, CoCoOp").

    t_c = text_tower([SOS] [V]_1..[V]_M  w(<name of c>) w(.) [EOS]),   logits = s * cos(f, t_c)

One context shared by the classes, or one per class (`baseline.coop_class_specific`, CoOp's CSC).
It starts at the word embeddings of `baseline.coop_init` ("a photo of a": M = its tokens) or, with
"", at M = `baseline.coop_context` vectors drawn from N(0, 0.02). Training: shuffled minibatches
of the training pool, the model's own loss over all its classes, SGD (momentum 0.9, weight decay
5e-4) at `baseline.coop_lr` on the context alone; the towers and the temperature stay as they
are (the gradient is taken with respect to the context only). Test time: no adaptation; the
learned context goes in front of the test classes' names.

The context joins the model as `model.<EXTENSION>` (`add_to_model`; checkpoints, resume and a
run's weights carry it). Under torchrun each rank takes its share of every batch and the context's gradient is
summed over the ranks, so P ranks take one process's steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mamf.catalogue import MAX_RATE, Setting
from mamf.data.prompts import cut_short, label_text, refuse_shared_tokens
from mamf.features.inputs import autocast
from mamf.methods.base import EXTENSION, TestTimeMethod, TrainedMethod, register
from mamf.methods.budget import classical_steps
from mamf.methods.embedded import predicted
from mamf.methods.finetune import EpochStream, check_finite
from mamf.methods.scorer import Scorer
from mamf.models.base import PromptLearnable
from mamf.parallel import distributed
from mamf.system.errors import MamfError, shown

INIT_STD = 0.02  # CoOp's random context: N(0, 0.02^2)
MOMENTUM, WEIGHT_DECAY = 0.9, 5e-4  # CoOp's SGD
MAX_CONTEXT = 1024  # above any text tower's length (CLIP's is 77): a bound before any allocation
# the random context's length M, which CoCoOp reads too
CONTEXT = Setting("baseline.coop_context", int, 16, "M, the context vectors drawn from N(0, 0.02) "
                  "when the init words are \"\"", minimum=0, above=True,
                  maximum=MAX_CONTEXT)


class PromptContext(nn.Module):
    """The learned context: `vectors` [M, W] (shared) or [C, M, W] (one per dataset class);
    CoCoOp's `meta_net` maps an image embedding to a shift of every context vector."""

    def __init__(self, vectors: torch.Tensor, meta_net: nn.Module | None = None):
        super().__init__()
        self.vectors = nn.Parameter(vectors)
        self.meta_net = meta_net

    @property
    def length(self) -> int:
        return self.vectors.shape[-2]


def context_of(model) -> PromptContext:
    context = getattr(model, EXTENSION, None)
    if not isinstance(context, PromptContext):
        raise MamfError("this model holds no learned prompt context: evaluate a run that coop "
                        "or cocoop trained (--run)")
    return context


def _common(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many leading tokens two id rows share."""
    n = min(len(a), len(b))
    differ = (a[:n] != b[:n]).nonzero()
    return int(differ[0]) if len(differ) else n


class Prompts:
    """Every dataset class's prompt "<prefix> <name>." tokenised once, and the token positions
    the context takes: those of `prefix`, after the tokenizer's leading special tokens (found as
    what the prefix shares with the empty text), the same in every class's prompt."""

    def __init__(self, model, names: list[str], prefix: str):
        texts = [f"{prefix} {name}." for name in names]
        cut = [t for t, short in zip(texts, cut_short(model, texts)) if short]
        if cut:
            raise MamfError(f"the prompt context ({len(prefix.split())} words) leaves no room "
                            f"for the class names: this model's tokenizer cuts {len(cut)} "
                            f"class prompt(s) short, e.g. {shown(cut[0][-60:])}; use fewer "
                            "init words or a smaller baseline.coop_context")
        self.tokens = model.tokenize(texts)
        refuse_shared_tokens(self.tokens, names, texts)
        empty = model.tokenize([""])["input_ids"][0]
        alone = model.tokenize([prefix])["input_ids"][0]
        self.start = _common(empty, alone)
        ids = self.tokens["input_ids"]
        self.stop = min(min(_common(alone, row) for row in ids), int(len(alone)))
        if self.stop <= self.start:
            raise MamfError(f"the prompt context {prefix!r} takes no token of its own in this "
                            "model's tokenizer")

    @property
    def length(self) -> int:
        return self.stop - self.start

    def rows(self, class_ids: np.ndarray) -> dict[str, torch.Tensor]:
        """These classes' tokens, cut to the longest of them."""
        rows = torch.as_tensor(np.asarray(class_ids), device=self.tokens["input_ids"].device)
        tokens = {k: v[rows] for k, v in self.tokens.items()}
        if "attention_mask" in tokens:
            width = max(int(tokens["attention_mask"].sum(1).max()), self.stop)
            tokens = {k: v[:, :width] for k, v in tokens.items()}
        return tokens


def prefix_for(init: str, length: int) -> str:
    """The words the context replaces: the init words, or M placeholders (CoOp's "X X ... X")."""
    return init.strip() or " ".join(["X"] * length)


def class_contexts(vectors: torch.Tensor, class_ids: np.ndarray) -> torch.Tensor:
    """[n, M, W]: the shared context [M, W] for every class, or each class's own of [C, M, W]."""
    if vectors.dim() == 2:
        return vectors.unsqueeze(0).expand(len(class_ids), -1, -1)
    return vectors[torch.as_tensor(np.asarray(class_ids), device=vectors.device)]


def class_embeddings(model, prompts: Prompts, class_ids: np.ndarray,
                     ctx: torch.Tensor) -> torch.Tensor:
    """Text embeddings [n, D] of the classes' prompts with the contexts `ctx` [n, M, W] in the
    context's places (the text tower over input embeddings)."""
    tokens = prompts.rows(class_ids)
    with torch.no_grad():
        words = model.text_input_embeddings(tokens)
    embeds = torch.cat([words[:, :prompts.start], ctx.to(words.dtype), words[:, prompts.stop:]],
                       dim=1)
    return model.encode_text_embeddings(embeds, tokens)


@dataclass(frozen=True)
class Prompted:
    """A model with its learned context, and the dataset's class prompts it goes into."""

    model: nn.Module
    context: PromptContext
    prompts: Prompts


class PromptedScorer(Scorer):
    """A task's query images against its classes' prompts with the learned context, as `method`
    (CoOp or CoCoOp) computes the logits, in chunks of `method.score_batch` images."""

    def __init__(self, method: CoOp, prompted: Prompted, inputs, task):
        self.method, self.prompted, self.inputs, self.task = method, prompted, inputs, task

    @torch.no_grad()
    def predict(self) -> np.ndarray:
        task, inputs, model = self.task, self.inputs, self.prompted.model
        given, batch_size = [], self.method.score_batch(task.ways)
        with autocast(inputs.device, inputs.precision):
            for first in range(0, len(task.query), batch_size):
                images = inputs.images(model, task.query[first:first + batch_size])
                given.append(predicted(self.method.logits(self.prompted, images, task.classes)))
        return np.concatenate(given) if given else np.zeros(0, dtype=np.int64)


@register
class CoOp(TrainedMethod, TestTimeMethod):
    name = "coop"
    only_when_named = True
    data_parallel = False  # the ranks share each batch and sum the context's gradient
    interpolates = False  # the context joins the model as training begins: no WiSE-FT start
    trains_adapters = False  # the context alone trains
    needs = {PromptLearnable: "a text tower that takes input embeddings"}
    settings = (
        CONTEXT,
        Setting("baseline.coop_init", str, "a photo of a", "the words the context starts at "
                "(their token count is M); \"\": M random vectors"),
        Setting("baseline.coop_class_specific", bool, False, "one context per class (CoOp's CSC) "
                "instead of one shared"),
        Setting("baseline.coop_lr", float, 2e-3, "the context's SGD rate (momentum 0.9, weight "
                "decay 5e-4) over train.steps / train.epochs", minimum=0, above=True,
                        maximum=MAX_RATE),
    )

    # what differs in CoCoOp (`mamf.methods.cocoop`)
    def init_words(self) -> str:
        return self.config.baseline.coop_init

    def learning_rate(self) -> float:
        return self.config.baseline.coop_lr

    def class_specific(self) -> bool:
        return self.config.baseline.coop_class_specific

    def meta_net(self, dim: int, width: int) -> nn.Module | None:
        return None

    def score_batch(self, ways: int) -> int:
        return 256

    # -- the context -------------------------------------------------------------------------
    def make_prompts(self, model, inputs) -> Prompts:
        names = [label_text(c) for c in inputs.dataset.classes]
        prompts = Prompts(model, names, prefix_for(self.init_words(),
                                                   self.config.baseline.coop_context))
        prompts.tokens = {k: v.to(inputs.device) for k, v in prompts.tokens.items()}
        return prompts

    def add_to_model(self, model, inputs) -> None:
        """A fresh context on the model, drawn from the run's seed (or the init words)."""
        super().add_to_model(model, inputs)
        self.check_model(model)
        prompts = self.make_prompts(model, inputs)
        generator = torch.Generator().manual_seed(
            int(np.random.SeedSequence([self.config.seed, 21]).generate_state(1)[0]))
        first = {k: v[:1] for k, v in prompts.tokens.items()}
        with torch.no_grad():
            words = model.text_input_embeddings(first)
            dim = model.encode_text_embeddings(words, first).shape[-1]
        width = words.shape[-1]
        if self.init_words().strip():
            vectors = words[0, prompts.start:prompts.stop].detach().clone().float().cpu()
        else:
            vectors = torch.randn(prompts.length, width, generator=generator) * INIT_STD
        if self.class_specific():
            vectors = vectors.unsqueeze(0).repeat(len(inputs.dataset.classes), 1, 1)
        with torch.random.fork_rng(devices=[]):  # the meta-net's layers draw from the seed
            torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
            context = PromptContext(vectors, self.meta_net(dim, width))
        setattr(model, EXTENSION, context.to(words.device))

    def load_extension(self, model, state) -> None:
        vectors = state[f"{EXTENSION}.vectors"]
        meta = None
        if f"{EXTENSION}.meta_net.0.weight" in state:
            hidden, dim = state[f"{EXTENSION}.meta_net.0.weight"].shape
            meta = meta_network(dim, hidden, vectors.shape[-1])
        setattr(model, EXTENSION, PromptContext(torch.zeros_like(vectors), meta))

    # -- training ----------------------------------------------------------------------------
    def begin(self, model, inputs, pool, rng, sampler, parallel=None) -> None:
        t = self.config.train
        self.inputs = inputs
        self.prompted = self.prompted_model(model, inputs)
        # 1. data: shuffled epochs over the training pool, candidates all its classes
        images, labels = pool.all_images()
        self.stream = EpochStream(rng, images, labels, pool.classes, t.batch_size)
        self.steps = classical_steps(pool, t)  # classical's schedule, under either budget
        self.trained = list(self.prompted.context.parameters())
        self.optimizer = torch.optim.SGD(self.trained, lr=self.learning_rate(),
                                         momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)

    def prompted_model(self, model, inputs) -> Prompted:
        """The model's learned context and the dataset's prompts (tokenised once for `inputs`,
        and kept for every test task after), checked to fit each other."""
        context = context_of(model)
        cached = getattr(self, "_prompts", None)
        if cached is None or cached[0] is not inputs:
            self._prompts = (inputs, self.make_prompts(model, inputs))
        prompts = self._prompts[1]
        if prompts.length != context.length:
            raise MamfError(f"the learned context has {context.length} vectors but the "
                            f"prompts leave {prompts.length} places: the run's settings differ")
        return Prompted(model, context, prompts)

    def step(self, i: int) -> float:
        # 2. update: this rank's share of the minibatch, the loss over the pool's classes, its
        # gradient with respect to the context only, summed over the ranks; one SGD step
        t = self.config.train
        batch = next(self.stream)
        total = len(batch.images)
        self.images += total
        start, count = distributed.share(total, distributed.rank(), distributed.world_size())
        self.optimizer.zero_grad(set_to_none=True)
        value = 0.0
        if count:
            rows = slice(start, start + count)
            with autocast(self.inputs.device, self.inputs.precision):
                with torch.no_grad():
                    images = self.inputs.images(self.prompted.model, batch.images[rows],
                                                t.augment, within=(start, total))
                logits = self.logits(self.prompted, images, batch.classes)
            labels = torch.as_tensor(batch.labels[rows], dtype=torch.long, device=logits.device)
            loss = self.prompted.model.task_loss(logits, labels)
            grads = torch.autograd.grad(loss * (count / total), self.trained, allow_unused=True)
            for p, g in zip(self.trained, grads):
                p.grad = g
            value = float(loss.detach()) * count / total
        distributed.sum_gradients(self.trained)
        value = check_finite(distributed.sum_scalar(value))
        self.optimizer.step()
        return value

    def logits(self, prompted: Prompted, images: torch.Tensor,
               classes: np.ndarray) -> torch.Tensor:
        """[B, n] logits of image embeddings against the classes' learned prompts."""
        ctx = class_contexts(prompted.context.vectors, classes)
        return prompted.model.task_logits(images, class_embeddings(
            prompted.model, prompted.prompts, classes, ctx))

    def stream_state(self) -> dict:
        return self.stream.state_dict()

    def load_stream_state(self, state: dict) -> None:
        self.stream.load_state_dict(state)

    # -- test time ---------------------------------------------------------------------------
    def adapt(self, model, inputs, task, rng) -> PromptedScorer:
        # 3. no test-time adaptation: the learned context prompts the task's classes
        return PromptedScorer(self, self.prompted_model(model, inputs), inputs, task)


def meta_network(dim: int, hidden: int, width: int) -> nn.Module:
    """CoCoOp's meta-net: Linear(D, D/16), ReLU, Linear(D/16, W)."""
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, width))

