"""Classical fine-tuning: ordinary shuffled minibatches over the whole training pool, the loss
over all N training classes (docs/method.md, "Classical fine-tuning")."""

from __future__ import annotations

from mamf.methods.base import TestTimeMethod, TrainedMethod, make_optimizer, register
from mamf.methods.budget import classical_steps
from mamf.methods.finetune import EpochStream, step


@register
class Classical(TrainedMethod, TestTimeMethod):
    name = "classical"

    def begin(self, model, inputs, pool, rng, sampler, parallel=None) -> None:
        t = self.config.train
        self.model, self.inputs, self.parallel = model, inputs, parallel
        # 1. data: shuffled epochs over every training image, candidates = all pool classes
        images, labels = pool.all_images()
        self.stream = EpochStream(rng, images, labels, pool.classes, t.batch_size)
        self.steps = classical_steps(pool, t)  # the budget every matched method gets
        self.optimizer = make_optimizer(self.params(model), t.lr, t.weight_decay)

    def step(self, i: int) -> float:
        # 2. update: one Adam step on the minibatch's loss
        t = self.config.train
        batch = next(self.stream)
        self.images += len(batch.images)
        return step(self.model, self.inputs, batch, self.optimizer, t.candidates, t.augment,
                    self.parallel)

    def chance_classes(self, pool) -> int | None:
        # every training class, unless the loss is over the batch's classes only
        return len(pool.classes) if self.config.train.candidates == "task" else None

    def stream_state(self) -> dict:
        return self.stream.state_dict()

    def load_stream_state(self, state: dict) -> None:
        self.stream.load_state_dict(state)

    # 3. test time: Adam on the support set (TestTimeMethod.adapt)
