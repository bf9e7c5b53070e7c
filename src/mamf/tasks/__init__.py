"""Tasks and the task samplers that choose their classes."""

# train.sampler's default, the sampler every other is compared with (light: reports import it)
DEFAULT_SAMPLER = "uniform"
