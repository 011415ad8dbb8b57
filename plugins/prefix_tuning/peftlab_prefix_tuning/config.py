"""Configs of the KV-prefix methods: the schema for CLI, UI and ``adapter_config.json`` (PEFT's key names).

Prefix tuning and P-Tuning v2 are both ``peft_type: PREFIX_TUNING`` in peft; the key
``prefix_projection`` tells them apart (true: an MLP reparameterises the prefix while training).
It is fixed per method, so it is written to ``adapter_config.json`` but is not a field to set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from peftlab import ConfigError, MethodConfig, option


def _positive_or_none(name: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"{name} must be a positive integer or empty (taken from the model), got {value!r}")


@dataclass
class KVPrefixConfig(MethodConfig):
    """Fields shared by every method that puts trainable key/value prefixes into the attention cache."""

    num_virtual_tokens: int = option(20, help="Prefix length k: key/value pairs prepended in every attention layer")
    token_dim: int | None = option(
        None, help="Width of one layer's keys (and values): num_key_value_heads × head_dim. "
                   "Empty = taken from the model (recorded when the adapter is made)")
    num_attention_heads: int | None = option(
        None, help="Key/value heads of the model (grouped-query models have fewer than query heads). "
                   "Empty = taken from the model")
    num_layers: int | None = option(None, help="Transformer layers that get a prefix. Empty = taken from the model")
    init_weights: Literal["zero"] | None = option(
        None, help="Empty: random normal init (as peft); 'zero': the prefix starts at zero keys and values")

    prefix_projection: ClassVar[bool] = False  # peft's switch between the two methods; fixed per method
    other_method: ClassVar[str] = ""  # the method that takes the other value of prefix_projection
    # keys peft writes for PREFIX_TUNING that carry no meaning here: 1 = decoder-only (one KV stack per layer)
    peft_ignored = {"num_transformer_submodules": 1}

    def __post_init__(self) -> None:
        k = self.num_virtual_tokens
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"num_virtual_tokens must be a positive integer, got {k!r}")
        for name in ("token_dim", "num_attention_heads", "num_layers"):
            _positive_or_none(name, getattr(self, name))
        if self.token_dim and self.num_attention_heads and self.token_dim % self.num_attention_heads:
            raise ConfigError(f"token_dim={self.token_dim} must be a multiple of "
                              f"num_attention_heads={self.num_attention_heads} (token_dim = heads × head_dim)")
        if self.init_weights not in (None, "zero"):
            raise ConfigError(f"init_weights must be empty or 'zero', got {self.init_weights!r}")

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "prefix_projection": self.prefix_projection}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> KVPrefixConfig:
        data = dict(data)
        projection = data.pop("prefix_projection", cls.prefix_projection)
        if bool(projection) != cls.prefix_projection:
            raise ConfigError(f"{source}: prefix_projection={projection!r} is the {cls.other_method} method, "
                              f"not {cls.__name__}; load it with method={cls.other_method!r}")
        return super().from_dict(data, source=source)


@dataclass
class PrefixTuningConfig(KVPrefixConfig):
    """Prefix tuning (Li & Liang 2021): P = MLP(P'), an MLP over a small embedding, collapsed at save time."""

    encoder_hidden_size: int | None = option(
        None, help="Hidden width of the reparameterisation MLP (Linear → Tanh → Linear). Empty = token_dim, as peft")

    prefix_projection: ClassVar[bool] = True
    other_method: ClassVar[str] = "p_tuning_v2"

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive_or_none("encoder_hidden_size", self.encoder_hidden_size)
