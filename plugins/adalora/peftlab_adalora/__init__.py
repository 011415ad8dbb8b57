"""AdaLoRA as a peftlab plugin: ``W x + P Λ Q x · α/r₀`` with an importance-driven rank budget."""

from __future__ import annotations

from peftlab import hookimpl

from .budget import RankAllocator
from .config import AdaLoraConfig
from .layer import AdaLoraLayer, inject_adalora, svd_layers
from .method import AdaLoRA, orthogonal_penalty

__all__ = [
    "AdaLoRA",
    "AdaLoraConfig",
    "AdaLoraLayer",
    "RankAllocator",
    "inject_adalora",
    "orthogonal_penalty",
    "svd_layers",
]


@hookimpl
def register_methods(register):
    register(AdaLoRA())
