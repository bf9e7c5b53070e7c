"""Zero-shot: no training and no adaptation; the pretrained model scores each query set against
the task's class prompts (docs/method.md, "Zero-shot")."""

from __future__ import annotations

from mamf.methods.base import Method, register


@register
class ZeroShot(Method):
    name = "zeroshot"
    trains = False

    def adapt(self, model, inputs, task, rng) -> None:
        return None
