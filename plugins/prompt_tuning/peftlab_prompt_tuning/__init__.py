"""Prompt Tuning as a peftlab plugin: ``[P; E(x)]`` — k trainable embeddings in front of the input.

The virtual-token machinery it runs on (``VirtualTokens``, ``VirtualTokenMethod``) is in ``peftlab.kit``, shared
with P-Tuning.
"""

from __future__ import annotations

from peftlab import hookimpl

from .config import PromptTuningConfig
from .embedding import PromptEmbedding
from .method import PromptTuning

__all__ = ["PromptEmbedding", "PromptTuning", "PromptTuningConfig"]


@hookimpl
def register_methods(register):
    register(PromptTuning())
