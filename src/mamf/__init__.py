"""mamf: few-shot transfer of vision-language models by model-agnostic multitask fine-tuning."""

__version__ = "0.1.0"
