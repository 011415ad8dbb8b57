"""P-Tuning's config: the prompt-learning keys plus PEFT's ``PromptEncoderConfig`` keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from peftlab import ConfigError, option
from peftlab.kit import PromptLearningConfig

ENCODERS = ("MLP", "LSTM")


@dataclass
class PromptEncoderConfig(PromptLearningConfig):
    encoder_reparameterization_type: Literal["MLP", "LSTM"] = option(
        "MLP",
        help="The prompt encoder: MLP (3 linear layers with ReLU) or LSTM (a bidirectional LSTM, then a 2-layer MLP)",
        choices=ENCODERS,
    )
    encoder_hidden_size: int | None = option(
        None, help="Hidden size of the prompt encoder (empty = the model's hidden size)"
    )
    encoder_num_layers: int = option(
        2, help="Layers of the LSTM (LSTM only; the MLP always has 3 linear layers, as in peft)"
    )
    encoder_dropout: float = option(0.0, help="Dropout between LSTM layers (LSTM with encoder_num_layers > 1 only)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.encoder_reparameterization_type, str):
            self.encoder_reparameterization_type = self.encoder_reparameterization_type.upper()
        if self.encoder_reparameterization_type not in ENCODERS:
            raise ConfigError(
                f"encoder_reparameterization_type must be MLP or LSTM, got {self.encoder_reparameterization_type!r}"
            )
        if self.encoder_hidden_size is not None and (
            not isinstance(self.encoder_hidden_size, int)
            or isinstance(self.encoder_hidden_size, bool)
            or self.encoder_hidden_size < 1
        ):
            raise ConfigError(
                f"encoder_hidden_size must be a positive integer or empty, got {self.encoder_hidden_size!r}"
            )
        if (
            not isinstance(self.encoder_num_layers, int)
            or isinstance(self.encoder_num_layers, bool)
            or self.encoder_num_layers < 1
        ):
            raise ConfigError(f"encoder_num_layers must be a positive integer, got {self.encoder_num_layers!r}")
        if not isinstance(self.encoder_dropout, (int, float)) or not 0.0 <= self.encoder_dropout < 1.0:
            raise ConfigError(f"encoder_dropout must be in [0, 1), got {self.encoder_dropout!r}")
