"""The shape of a model's key/value cache, read from its config the way peft reads it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import AdapterMismatchError, MethodError


def _first(cfg, *names: str) -> int | None:
    for name in names:
        value = getattr(cfg, name, None)
        if value is not None:
            return int(value)
    return None


@dataclass(frozen=True)
class KVGeometry:
    """Per layer, keys and values are ``[batch, num_kv_heads, seq, head_dim]``."""

    num_layers: int
    num_kv_heads: int
    head_dim: int

    @property
    def token_dim(self) -> int:  # peft's name for one layer's key width: kv heads × head_dim
        return self.num_kv_heads * self.head_dim

    @property
    def prefix_width(self) -> int:  # one virtual token's keys and values for every layer
        return self.num_layers * 2 * self.token_dim

    @classmethod
    def of(cls, model: torch.nn.Module) -> KVGeometry:
        cfg = model.config
        cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        layers = _first(cfg, "num_hidden_layers", "num_layers", "n_layer")
        hidden = _first(cfg, "hidden_size", "n_embd", "d_model")
        heads = _first(cfg, "num_attention_heads", "n_head", "num_heads")
        if not (layers and hidden and heads):
            raise MethodError(
                f"{type(model).__name__}: cannot read num_layers/hidden size/attention heads from its "
                f"config, so the prefix cannot be shaped"
            )
        kv_heads = _first(cfg, "num_key_value_heads") or heads  # grouped-query attention caches fewer heads
        head_dim = _first(cfg, "head_dim") if getattr(cfg, "num_key_value_heads", None) is not None else None
        return cls(layers, kv_heads, head_dim or hidden // heads)

    def describe(self) -> str:
        return (
            f"num_layers={self.num_layers}, key/value heads={self.num_kv_heads}, head_dim={self.head_dim} "
            f"(token_dim={self.token_dim})"
        )

    def check(self, config, model_name: str) -> None:
        """Refuse a config recorded for another model: name every number that differs."""
        expected = {
            "num_layers": self.num_layers,
            "num_attention_heads": self.num_kv_heads,
            "token_dim": self.token_dim,
        }
        diff = [
            f"{key}: adapter {getattr(config, key)} vs model {value}"
            for key, value in expected.items()
            if getattr(config, key) is not None and getattr(config, key) != value
        ]
        if diff:
            raise AdapterMismatchError(
                f"this prefix adapter was made for another model ({'; '.join(diff)}); {model_name} has "
                f"{self.describe()}"
            )
