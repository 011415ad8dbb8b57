"""P-Tuning v2 as a peftlab plugin: deep prompts, built on the KV-prefix machinery in peftlab.kit."""

from __future__ import annotations

from peftlab import hookimpl

from .config import PTuningV2Config
from .method import PTuningV2
from .prompts import DeepPrompts

__all__ = ["DeepPrompts", "PTuningV2", "PTuningV2Config"]


@hookimpl
def register_methods(register):
    register(PTuningV2())
