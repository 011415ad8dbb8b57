"""The AdaLoRA layer, after the paper: ``h = W x + P Λ Q x · α / r₀`` (read ``forward`` first).

``P`` (``lora_B``, out×r) and ``Q`` (``lora_A``, r×in) play the left/right singular vectors and ``Λ``
(``lora_E``, r×1) the singular values; the rank allocator prunes a triplet (Pᵢ, λᵢ, Qᵢ) by zeroing λᵢ.
The layer extends LoRA's, so a LoRA adapter and an AdaLoRA adapter can share one wrapped module.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from peftlab import adapter_state
from peftlab.kit import replace_module
from peftlab_lora.layer import LoraLayer, lora_targets

EPS = 1e-5  # peft divides by (ranknum + 1e-5); kept so outputs match peft's to the last bit we can


class AdaLoraLayer(LoraLayer):
    """A ``LoraLayer`` that also holds SVD-form adapters: ``lora_E[name]`` marks an AdaLoRA adapter."""

    def __init__(self, base_layer: nn.Module, state) -> None:
        super().__init__(base_layer, state)
        self.lora_E = nn.ParameterDict()
        self.ranknum: dict[str, float] = {}  # r₀, the rank the adapter was created with: the scaling's divisor

    @classmethod
    def from_lora(cls, layer: LoraLayer) -> AdaLoraLayer:
        """Take over an existing ``LoraLayer`` (and its LoRA adapters, same parameter objects)."""
        new = cls(layer.base_layer, layer.state)
        new.lora_A, new.lora_B, new.lora_dropout = layer.lora_A, layer.lora_B, layer.lora_dropout
        new.scaling, new.weights = layer.scaling, layer.weights
        return new

    def add_svd(self, name: str, r: int, alpha: float, dropout: float, init: bool) -> None:
        weight = self.base_layer.weight
        dtype = weight.dtype if weight.dtype.is_floating_point else torch.float32  # 4-bit bases train in fp32
        kw = dict(device=weight.device, dtype=dtype)
        self.lora_A[name] = nn.Linear(self.in_features, r, bias=False, **kw)  # Q: right singular vectors
        self.lora_B[name] = nn.Linear(r, self.out_features, bias=False, **kw)  # P: left singular vectors
        self.lora_E[name] = nn.Parameter(torch.zeros(r, 1, **kw))  # Λ: singular values
        self.lora_dropout[name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling[name] = alpha
        self.ranknum[name] = float(r)
        with torch.no_grad():
            if init:  # Λ = 0: the adapter starts as the identity; P, Q small so their gradients are too
                nn.init.normal_(self.lora_A[name].weight, std=0.02)
                nn.init.normal_(self.lora_B[name].weight, std=0.02)
            else:  # peft's uninitialised draw: an adapter that acts from the start
                for p in (self.lora_A[name].weight, self.lora_B[name].weight, self.lora_E[name]):
                    p.normal_()

    def rank(self, name: str) -> int:
        return self.lora_E[name].shape[0]

    def resize(self, name: str, r: int) -> None:
        """Give adapter ``name`` ``r`` triplets (values are loaded after); r₀ and thus the scaling stay."""
        A, B, E = self.lora_A[name].weight, self.lora_B[name].weight, self.lora_E[name]
        kw = dict(device=E.device, dtype=E.dtype)
        self.lora_A[name] = nn.Linear(self.in_features, r, bias=False, **kw)
        self.lora_B[name] = nn.Linear(r, self.out_features, bias=False, **kw)
        self.lora_E[name] = nn.Parameter(torch.zeros(r, 1, **kw))
        for new, old in ((self.lora_A[name].weight, A), (self.lora_B[name].weight, B)):
            new.requires_grad_(old.requires_grad)
        self.lora_E[name].requires_grad_(E.requires_grad)

    def remove(self, name: str) -> None:
        """Drop adapter ``name`` (any kind) from this layer."""
        for d in (self.lora_A, self.lora_B, self.lora_dropout, self.lora_E):
            if name in d:
                del d[name]
        self.scaling.pop(name, None)
        self.weights.pop(name, None)
        self.ranknum.pop(name, None)

    def svd_scaling(self, name: str) -> float:
        return self.scaling[name] / (self.ranknum[name] + EPS)

    def delta_weight(self, name: str) -> torch.Tensor:
        """ΔW = P (Λ ⊙ Q) · α / r₀, shaped like the base weight (LoRA's ΔW for LoRA adapters)."""
        if name not in self.lora_E:
            return super().delta_weight(name)
        P, Q, E = self.lora_B[name].weight, self.lora_A[name].weight, self.lora_E[name]
        delta = (P @ (Q * E)) * self.svd_scaling(name)
        return delta.T if self.fan_in_fan_out else delta

    def update(self, name: str, x: torch.Tensor) -> torch.Tensor | None:
        if name not in self.lora_E:
            return super().update(name, x)  # a LoRA adapter: B A x · α/r
        A, B = self.lora_A[name].weight, self.lora_B[name].weight
        if A.shape[0] == 0:  # every triplet pruned: the adapter is the identity here
            return None
        x_in = self.lora_dropout[name](x.to(A.dtype))
        return F.linear(F.linear(x_in, A * self.lora_E[name]), B) * self.svd_scaling(name)  # P Λ Q x · α/r₀


def svd_layers(model: nn.Module, name: str) -> dict[str, AdaLoraLayer]:
    """``{module path: AdaLoraLayer}`` of the layers holding AdaLoRA adapter ``name``."""
    return {path: m for path, m in model.named_modules() if isinstance(m, AdaLoraLayer) and name in m.lora_E}


def inject_adalora(
    model: nn.Module, name: str, r: int, alpha: float, dropout: float, init: bool, targets: list[str] | str | None
) -> list[str]:
    """Wrap every targeted layer in an ``AdaLoraLayer`` (taking over a ``LoraLayer``); return the paths."""
    state = adapter_state(model)
    paths = lora_targets(model, targets)
    for path in paths:
        module = model.get_submodule(path)
        if not isinstance(module, AdaLoraLayer):
            module = AdaLoraLayer.from_lora(module) if isinstance(module, LoraLayer) else AdaLoraLayer(module, state)
            replace_module(model, path, module)
        module.add_svd(name, r, alpha, dropout, init)
    return paths
