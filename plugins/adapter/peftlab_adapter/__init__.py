"""Bottleneck adapters as a peftlab plugin: ``h ← h + f(h W_down) W_up`` after each chosen sublayer."""

from __future__ import annotations

from peftlab import hookimpl

from .config import BottleneckAdapterConfig
from .layer import Bottleneck, bottlenecks, inject_bottlenecks
from .method import BottleneckAdapter
from .sublayers import SUBLAYERS, find_layers, sublayer_paths

__all__ = [
    "SUBLAYERS",
    "Bottleneck",
    "BottleneckAdapter",
    "BottleneckAdapterConfig",
    "bottlenecks",
    "find_layers",
    "inject_bottlenecks",
    "sublayer_paths",
]


@hookimpl
def register_methods(register):
    register(BottleneckAdapter())
