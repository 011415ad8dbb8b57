"""LoRA as a peftlab plugin: ``W x + B A x · scaling``."""

from __future__ import annotations

from peftlab import hookimpl

from .config import LoraConfig
from .layer import LoraLayer, inject_lora, lora_layers, lora_targets, resolve_targets
from .method import LoRA

__all__ = ["LoRA", "LoraConfig", "LoraLayer", "inject_lora", "lora_layers", "lora_targets", "resolve_targets"]


@hookimpl
def register_methods(register):
    register(LoRA())
