"""Prefix tuning's config: PEFT's ``PREFIX_TUNING`` keys with ``prefix_projection: true`` (the MLP)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from peftlab import option
from peftlab.kit import KVPrefixConfig, positive_or_none


@dataclass
class PrefixTuningConfig(KVPrefixConfig):
    """Prefix tuning (Li & Liang 2021): P = MLP(P'), an MLP over a small embedding, collapsed at save time."""

    encoder_hidden_size: int | None = option(
        None, help="Hidden width of the reparameterisation MLP (Linear → Tanh → Linear). Empty = token_dim, as peft"
    )

    prefix_projection: ClassVar[bool] = True
    other_method: ClassVar[str] = "p_tuning_v2"

    def __post_init__(self) -> None:
        super().__post_init__()
        positive_or_none("encoder_hidden_size", self.encoder_hidden_size)
