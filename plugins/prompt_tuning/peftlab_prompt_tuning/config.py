"""Configs of the virtual-token methods (PEFT's key names, so ``adapter_config.json`` round-trips)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from peftlab import ConfigError, MethodConfig, option

INITS = ("RANDOM", "SAMPLE_VOCAB", "TEXT")


def _positive_or_none(name: str, value: object) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ConfigError(f"{name} must be a positive integer or empty, got {value!r}")


@dataclass
class PromptLearningConfig(MethodConfig):
    """The keys PEFT's ``PromptLearningConfig`` writes for every virtual-token method.

    ``token_dim``, ``num_attention_heads`` and ``num_layers`` are filled in from the model when the
    adapter is injected (as ``peft`` does); ``token_dim`` is then checked against the model.
    """

    num_virtual_tokens: int = option(20, help="Number of virtual tokens k prepended to every input")
    token_dim: int | None = option(None, help="Hidden size of the model's input embeddings (empty = read from "
                                              "the model; a different value means the adapter is for another model)")
    num_transformer_submodules: int | None = option(
        None, help="1 for decoder-only and encoder-only models (empty = 1); encoder-decoder models are not supported")
    num_attention_heads: int | None = option(None, help="Recorded for PEFT compatibility (empty = from the model)")
    num_layers: int | None = option(None, help="Recorded for PEFT compatibility (empty = from the model)")

    def __post_init__(self) -> None:
        if not isinstance(self.num_virtual_tokens, int) or isinstance(self.num_virtual_tokens, bool) \
                or self.num_virtual_tokens < 1:
            raise ConfigError(f"num_virtual_tokens must be a positive integer, got {self.num_virtual_tokens!r}")
        for name in ("token_dim", "num_transformer_submodules", "num_attention_heads", "num_layers"):
            _positive_or_none(name, getattr(self, name))
        if self.num_transformer_submodules not in (None, 1):
            raise ConfigError(f"num_transformer_submodules={self.num_transformer_submodules} is for encoder-decoder "
                              "models, which peftlab's virtual-token methods do not support; use 1")


@dataclass
class PromptTuningConfig(PromptLearningConfig):
    prompt_tuning_init: Literal["RANDOM", "SAMPLE_VOCAB", "TEXT"] = option(
        "SAMPLE_VOCAB", help="How the k prompt embeddings start: SAMPLE_VOCAB (embeddings of random vocabulary "
                             "tokens), TEXT (the embeddings of prompt_tuning_init_text, repeated/cut to k) or RANDOM "
                             "(standard normal, as peft)", choices=INITS)
    prompt_tuning_init_text: str | None = option(None, help="The text whose token embeddings start the prompt "
                                                            "(prompt_tuning_init=TEXT)")
    tokenizer_name_or_path: str | None = option(
        None, help="Tokenizer for prompt_tuning_init=TEXT (empty = the base model's own tokenizer)")
    tokenizer_kwargs: dict | None = option(None, help="Extra keyword arguments for loading that tokenizer (JSON "
                                                      "object; prompt_tuning_init=TEXT only)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.prompt_tuning_init, str):
            self.prompt_tuning_init = self.prompt_tuning_init.upper()
        if self.prompt_tuning_init not in INITS:
            raise ConfigError(f"prompt_tuning_init must be one of {', '.join(INITS)}, got {self.prompt_tuning_init!r}")
        if self.prompt_tuning_init == "TEXT" and not (self.prompt_tuning_init_text or "").strip():
            raise ConfigError("prompt_tuning_init=TEXT needs prompt_tuning_init_text (the text whose embeddings "
                              "start the prompt)")
        if isinstance(self.tokenizer_kwargs, str):  # from a CLI flag or a UI textbox
            try:
                self.tokenizer_kwargs = json.loads(self.tokenizer_kwargs) if self.tokenizer_kwargs.strip() else None
            except json.JSONDecodeError as e:
                raise ConfigError(f"tokenizer_kwargs must be a JSON object: {e}") from None
        if self.tokenizer_kwargs is not None and not isinstance(self.tokenizer_kwargs, dict):
            raise ConfigError(f"tokenizer_kwargs must be a JSON object, got {self.tokenizer_kwargs!r}")
        if self.tokenizer_kwargs and self.prompt_tuning_init != "TEXT":
            raise ConfigError("tokenizer_kwargs only apply with prompt_tuning_init=TEXT")
