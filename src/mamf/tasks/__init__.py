"""Tasks and the task samplers that choose their classes."""
