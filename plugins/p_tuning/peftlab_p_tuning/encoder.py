"""P-Tuning's prompt encoder (Liu et al. 2021, "GPT Understands, Too"): ``P = MLP(BiLSTM(E))`` or ``MLP(E)``.

Layer names follow peft's ``PromptEncoder`` (``embedding``, ``lstm_head``, ``mlp_head``) so its state
maps one to one. An adapter saved by ``peft`` keeps only the encoder's output; loaded here, the
encoder is replaced by that fixed ``[k, d]`` tensor (``freeze_output``).
"""

from __future__ import annotations

import torch
from torch import nn


class PromptEncoder(nn.Module):
    """Maps k input embeddings ``E ∈ R^{k×d}`` to the k virtual tokens through a reparameterisation."""

    def __init__(
        self,
        num_virtual_tokens: int,
        token_dim: int,
        hidden: int,
        kind: str,
        lstm_layers: int,
        dropout: float,
        *,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.num_virtual_tokens = num_virtual_tokens
        self.kind = kind
        factory = {"device": device, "dtype": dtype}
        self.embedding = nn.Embedding(num_virtual_tokens, token_dim, **factory)
        if kind == "LSTM":
            self.lstm_head = nn.LSTM(
                token_dim,
                hidden,
                num_layers=lstm_layers,
                dropout=dropout if lstm_layers > 1 else 0.0,
                bidirectional=True,
                batch_first=True,
                **factory,
            )
            self.mlp_head = nn.Sequential(
                nn.Linear(2 * hidden, 2 * hidden, **factory), nn.ReLU(), nn.Linear(2 * hidden, token_dim, **factory)
            )
        else:
            self.mlp_head = nn.Sequential(
                nn.Linear(token_dim, hidden, **factory),
                nn.ReLU(),
                nn.Linear(hidden, hidden, **factory),
                nn.ReLU(),
                nn.Linear(hidden, token_dim, **factory),
            )
        self.prompt_embeddings: nn.Parameter | None = None  # set by freeze_output: the encoder is gone

    @property
    def frozen_output(self) -> bool:
        return self.prompt_embeddings is not None

    def forward(self) -> torch.Tensor:
        if self.prompt_embeddings is not None:
            return self.prompt_embeddings  # [k, d], as saved by peft
        E = self.embedding.weight[None]  # [1, k, d]: one sequence of k prompt inputs
        h = self.lstm_head(E)[0] if self.kind == "LSTM" else E  # the BiLSTM lets each token see all the others
        return self.mlp_head(h)[0]  # [k, d]

    def freeze_output(self, prompt_embeddings: torch.Tensor) -> None:
        """Drop the encoder and serve ``prompt_embeddings`` as they are (what peft saves for P-Tuning)."""
        weight = self.embedding.weight
        for name in ("embedding", "lstm_head", "mlp_head"):
            if hasattr(self, name):
                delattr(self, name)
        self.prompt_embeddings = nn.Parameter(prompt_embeddings.detach().to(weight.device, weight.dtype).clone())
