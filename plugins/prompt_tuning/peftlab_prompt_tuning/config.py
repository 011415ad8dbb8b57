"""Configs of the virtual-token methods (PEFT's key names, so ``adapter_config.json`` round-trips)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from peftlab import ConfigError, option
from peftlab.kit import PromptLearningConfig

INITS = ("RANDOM", "SAMPLE_VOCAB", "TEXT")


@dataclass
class PromptTuningConfig(PromptLearningConfig):
    prompt_tuning_init: Literal["RANDOM", "SAMPLE_VOCAB", "TEXT"] = option(
        "SAMPLE_VOCAB",
        help="How the k prompt embeddings start: SAMPLE_VOCAB (embeddings of random vocabulary "
        "tokens), TEXT (the embeddings of prompt_tuning_init_text, repeated/cut to k) or RANDOM "
        "(standard normal, as peft)",
        choices=INITS,
    )
    prompt_tuning_init_text: str | None = option(
        None, help="The text whose token embeddings start the prompt (prompt_tuning_init=TEXT)"
    )
    tokenizer_name_or_path: str | None = option(
        None, help="Tokenizer for prompt_tuning_init=TEXT (empty = the base model's own tokenizer)"
    )
    tokenizer_kwargs: dict | None = option(
        None, help="Extra keyword arguments for loading that tokenizer (JSON object; prompt_tuning_init=TEXT only)"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.prompt_tuning_init, str):
            self.prompt_tuning_init = self.prompt_tuning_init.upper()
        if self.prompt_tuning_init not in INITS:
            raise ConfigError(f"prompt_tuning_init must be one of {', '.join(INITS)}, got {self.prompt_tuning_init!r}")
        if self.prompt_tuning_init == "TEXT" and not (self.prompt_tuning_init_text or "").strip():
            raise ConfigError(
                "prompt_tuning_init=TEXT needs prompt_tuning_init_text (the text whose embeddings start the prompt)"
            )
        if isinstance(self.tokenizer_kwargs, str):  # from a CLI flag or a UI textbox
            try:
                self.tokenizer_kwargs = json.loads(self.tokenizer_kwargs) if self.tokenizer_kwargs.strip() else None
            except json.JSONDecodeError as e:
                raise ConfigError(f"tokenizer_kwargs must be a JSON object: {e}") from None
        if self.tokenizer_kwargs is not None and not isinstance(self.tokenizer_kwargs, dict):
            raise ConfigError(f"tokenizer_kwargs must be a JSON object, got {self.tokenizer_kwargs!r}")
        if self.tokenizer_kwargs and self.prompt_tuning_init != "TEXT":
            raise ConfigError("tokenizer_kwargs only apply with prompt_tuning_init=TEXT")
