"""BitFit as a peftlab plugin: train only the bias terms, ``y = W x + b + Δb``."""

from __future__ import annotations

from peftlab import hookimpl

from .config import BitFitConfig
from .layer import bias_layers, inject_bias_deltas
from .method import BitFit
from .select import select_modules

__all__ = ["BitFit", "BitFitConfig", "bias_layers", "inject_bias_deltas", "select_modules"]


@hookimpl
def register_methods(register):
    register(BitFit())
