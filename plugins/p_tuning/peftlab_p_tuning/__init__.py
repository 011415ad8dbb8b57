"""P-Tuning v1 as a peftlab plugin: ``[MLP(BiLSTM(E)); E(x)]`` — an encoder makes the virtual tokens."""

from __future__ import annotations

from peftlab import hookimpl

from .config import PromptEncoderConfig
from .encoder import PromptEncoder
from .method import PTuning

__all__ = ["PTuning", "PromptEncoder", "PromptEncoderConfig"]


@hookimpl
def register_methods(register):
    register(PTuning())
