"""Prefix tuning as a peftlab plugin: trainable keys/values ``P = MLP(P')`` before every layer's attention.

The KV-prefix machinery it runs on (``KVPrefix``, ``KVPrefixMethod``) is in ``peftlab.kit``, shared with P-Tuning v2.
"""

from __future__ import annotations

from peftlab import hookimpl

from .config import PrefixTuningConfig
from .encoder import PrefixEncoder
from .method import PrefixTuning

__all__ = ["PrefixEncoder", "PrefixTuning", "PrefixTuningConfig"]


@hookimpl
def register_methods(register):
    register(PrefixTuning())
