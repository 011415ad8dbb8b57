"""P-Tuning v2's config: peft's PREFIX_TUNING keys with ``prefix_projection: false``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from peftlab.kit import KVPrefixConfig


@dataclass
class PTuningV2Config(KVPrefixConfig):
    """Deep prompts (Liu et al. 2021): the per-layer keys and values are the trained parameters themselves."""

    prefix_projection: ClassVar[bool] = False
    other_method: ClassVar[str] = "prefix_tuning"
    # peft writes encoder_hidden_size (= token_dim) even without an MLP; it means nothing here
    peft_ignored = {**KVPrefixConfig.peft_ignored, "encoder_hidden_size": ...}
