"""The one training loop, its checkpoints and log, and the meta-test."""
