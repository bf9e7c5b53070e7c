"""Zero-shot: no training and no adaptation; the pretrained model scores each query set against
the task's class prompts (docs/method.md, "Zero-shot")."""

from __future__ import annotations

from mamf.methods.base import ModelScorer, TestTimeMethod, register


@register
class ZeroShot(TestTimeMethod):
    name = "zeroshot"

    def adapt(self, model, inputs, task, rng) -> ModelScorer:
        return ModelScorer(model, inputs, task)  # the pretrained model as it is
