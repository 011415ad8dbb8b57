"""Prefix tuning's reparameterisation (Li & Liang 2021, §4.3): ``P = MLP(P')``.

Training the prefix ``P`` directly is unstable, so the paper trains a small embedding ``P'`` and an
MLP that maps it to the keys and values of every layer. After training only ``P`` matters: it is
collapsed into one tensor ``[k, num_layers·2·token_dim]`` (what peft saves as ``prompt_embeddings``).
"""

from __future__ import annotations

import torch
from torch import nn


class PrefixEncoder(nn.Module):
    """``forward() -> P``: the prefix ``[k, num_layers·2·token_dim]``, from the MLP or, once collapsed, as is."""

    def __init__(
        self,
        k: int,
        token_dim: int,
        hidden: int,
        prefix_width: int,
        zero_init: bool,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        super().__init__()
        self.num_virtual_tokens = k
        self.embedding = nn.Embedding(k, token_dim, device=device, dtype=dtype)  # P'
        self.transform = nn.Sequential(  # the MLP, as peft builds it (same key names in the saved extra state)
            nn.Linear(token_dim, hidden, device=device, dtype=dtype),
            nn.Tanh(),
            nn.Linear(hidden, prefix_width, device=device, dtype=dtype),
        )
        if zero_init:  # the last layer at zero: P = 0 whatever P' is
            nn.init.zeros_(self.transform[-1].weight)
            nn.init.zeros_(self.transform[-1].bias)
        self.prompt_embeddings: nn.Parameter | None = None  # P itself, when no MLP is known (a peft-made adapter)

    @property
    def reparameterised(self) -> bool:
        return self.prompt_embeddings is None

    def forward(self) -> torch.Tensor:
        if self.prompt_embeddings is not None:
            return self.prompt_embeddings
        return self.transform(self.embedding.weight)  # P = MLP(P')

    def collapse(self, prefix: torch.Tensor) -> None:
        """Hold ``P`` directly and drop the MLP: peft keeps only ``P``, and the MLP cannot be recovered from it."""
        weight = self.embedding.weight
        del self.embedding, self.transform
        self.embedding = self.transform = None
        self.prompt_embeddings = nn.Parameter(prefix.detach().to(device=weight.device, dtype=weight.dtype).clone())
