"""QLoRA as a peftlab plugin: LoRA (``W₄ x + B A x · α/r``) over a base model loaded in 4-bit NF4."""

from __future__ import annotations

from peftlab import hookimpl

from .base import keep_trainable_layout, linear4bit_layers, load_4bit, require_bitsandbytes
from .config import QLoraConfig
from .method import QLoRA

__all__ = ["QLoRA", "QLoraConfig", "keep_trainable_layout", "linear4bit_layers", "load_4bit", "require_bitsandbytes"]


@hookimpl
def register_methods(register):
    register(QLoRA())
