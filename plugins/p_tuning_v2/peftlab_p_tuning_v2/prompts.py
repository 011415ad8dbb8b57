"""P-Tuning v2's deep prompts: every layer gets its own trainable keys and values, no reparameterisation.

The prompts are one parameter ``[k, num_layers·2·token_dim]`` laid out exactly as peft's
``prompt_embeddings`` (layer, key|value, head, head_dim): layer ℓ's keys are the columns
``[2ℓ·token_dim, (2ℓ+1)·token_dim)`` and its values the next ``token_dim``, so saving is a copy.
"""

from __future__ import annotations

import torch
from torch import nn


class DeepPrompts(nn.Module):
    """``forward() -> P``: the per-layer key/value prompts themselves."""

    def __init__(self, k: int, prefix_width: int, zero_init: bool, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.num_virtual_tokens = k
        P = torch.zeros(k, prefix_width, device=device, dtype=dtype)
        if not zero_init:
            nn.init.normal_(P)  # peft's init (an nn.Embedding's N(0, 1))
        self.prompts = nn.Parameter(P)

    def forward(self) -> torch.Tensor:
        return self.prompts
