"""mamf: few-shot transfer of vision-language models by model-agnostic multitask fine-tuning."""

from mamf.allocator import keep_freed_memory

# first, before any large allocation; every process that imports mamf, torchrun's workers included
KEEPS_FREED_MEMORY = keep_freed_memory()

__version__ = "0.1.0"
