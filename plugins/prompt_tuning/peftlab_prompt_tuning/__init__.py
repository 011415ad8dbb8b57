"""Prompt Tuning as a peftlab plugin: ``[P; E(x)]`` — k trainable embeddings in front of the input.

Also the shared virtual-token machinery (``VirtualTokens``, ``VirtualTokenMethod``) that other
virtual-token plugins (P-Tuning) declare a dependency on and reuse.
"""

from __future__ import annotations

from peftlab import hookimpl

from .config import PromptLearningConfig, PromptTuningConfig
from .embedding import PromptEmbedding
from .method import PromptTuning
from .virtual_method import VIRTUAL_TOKEN_CAPABILITIES, VirtualTokenMethod, check_prompt_tensor, prompt_of, token_dim
from .virtual_tokens import VirtualTokens

__all__ = ["PromptEmbedding", "PromptLearningConfig", "PromptTuning", "PromptTuningConfig",
           "VIRTUAL_TOKEN_CAPABILITIES", "VirtualTokenMethod", "VirtualTokens", "check_prompt_tensor", "prompt_of",
           "token_dim"]


@hookimpl
def register_methods(register):
    register(PromptTuning())
