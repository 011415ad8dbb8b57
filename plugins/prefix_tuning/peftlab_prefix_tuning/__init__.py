"""Prefix tuning as a peftlab plugin: trainable keys/values ``P = MLP(P')`` before every layer's attention."""

from __future__ import annotations

from peftlab import hookimpl

from .cache import KVPrefix, PrefixSlots
from .config import KVPrefixConfig, PrefixTuningConfig
from .encoder import PrefixEncoder
from .geometry import KVGeometry
from .method import PROMPT_KEY, KVPrefixMethod, PrefixTuning, prefix_encoder

__all__ = ["PROMPT_KEY", "KVGeometry", "KVPrefix", "KVPrefixConfig", "KVPrefixMethod", "PrefixEncoder",
           "PrefixSlots", "PrefixTuning", "PrefixTuningConfig", "prefix_encoder"]


@hookimpl
def register_methods(register):
    register(PrefixTuning())
