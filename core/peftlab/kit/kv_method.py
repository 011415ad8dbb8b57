"""What every KV-prefix method shares (prefix tuning, P-Tuning v2): the config keys peft writes for
``PREFIX_TUNING``, and a ``Method`` base whose hooks put a prefix encoder's keys and values into every layer's
attention cache (through ``KVPrefix``, ``kv_prefix.py``).

A subclass says how to build its prefix encoder (``make_encoder``: a module whose ``forward()`` returns the
prefix ``P: [k, num_layers·2·token_dim]``) and what it keeps beside PEFT's ``prompt_embeddings``.
Prefix tuning and P-Tuning v2 are both ``peft_type: PREFIX_TUNING`` in peft; the key ``prefix_projection``
tells them apart (true: an MLP reparameterises the prefix while training). It is fixed per method, so it is
written to ``adapter_config.json`` but is not a field to set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from ..errors import AdapterMismatchError, ConfigError, MethodError
from ..hookspecs import hookimpl
from ..method import AdapterWeights, Capabilities, Method, MethodConfig
from ..schema import option
from .kv_geometry import KVGeometry
from .kv_prefix import STORE, KVPrefix
from .modules import placement
from .virtual_method import PROMPT_COMBINATIONS, PROMPT_KEY, combine_prompts, positive_or_none


@dataclass
class KVPrefixConfig(MethodConfig):
    """Fields shared by every method that puts trainable key/value prefixes into the attention cache."""

    num_virtual_tokens: int = option(20, help="Prefix length k: key/value pairs prepended in every attention layer")
    token_dim: int | None = option(
        None,
        help="Width of one layer's keys (and values): num_key_value_heads × head_dim. "
        "Empty = taken from the model (recorded when the adapter is made)",
    )
    num_attention_heads: int | None = option(
        None,
        help="Key/value heads of the model (grouped-query models have fewer than query heads). "
        "Empty = taken from the model",
    )
    num_layers: int | None = option(None, help="Transformer layers that get a prefix. Empty = taken from the model")
    init_weights: Literal["zero"] | None = option(
        None, help="Empty: random normal init (as peft); 'zero': the prefix starts at zero keys and values"
    )

    prefix_projection: ClassVar[bool] = False  # peft's switch between the two methods; fixed per method
    other_method: ClassVar[str] = ""  # the method that takes the other value of prefix_projection
    # keys peft writes for PREFIX_TUNING that carry no meaning here: 1 = decoder-only (one KV stack per layer)
    peft_ignored = {"num_transformer_submodules": 1}

    def __post_init__(self) -> None:
        k = self.num_virtual_tokens
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"num_virtual_tokens must be a positive integer, got {k!r}")
        for name in ("token_dim", "num_attention_heads", "num_layers"):
            positive_or_none(name, getattr(self, name))
        if self.token_dim and self.num_attention_heads and self.token_dim % self.num_attention_heads:
            raise ConfigError(
                f"token_dim={self.token_dim} must be a multiple of "
                f"num_attention_heads={self.num_attention_heads} (token_dim = heads × head_dim)"
            )
        if self.init_weights not in (None, "zero"):
            raise ConfigError(f"init_weights must be empty or 'zero', got {self.init_weights!r}")

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "prefix_projection": self.prefix_projection}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> KVPrefixConfig:
        data = dict(data)
        projection = data.pop("prefix_projection", cls.prefix_projection)
        if bool(projection) != cls.prefix_projection:
            raise ConfigError(
                f"{source}: prefix_projection={projection!r} is the {cls.other_method} method, "
                f"not {cls.__name__}; load it with method={cls.other_method!r}"
            )
        return super().from_dict(data, source=source)


def prefix_encoder(model: nn.Module, adapter_name: str) -> nn.Module:
    store = getattr(model, STORE, None)
    if store is None or adapter_name not in store:
        raise MethodError(f"the model has no prefix adapter named {adapter_name!r}")
    return store[adapter_name]


class KVPrefixMethod(Method):
    """Trainable keys/values at the front of every layer's attention cache."""

    config_class = KVPrefixConfig
    peft_type = "PREFIX_TUNING"
    capabilities = Capabilities(
        mergeable=False,
        stackable=True,
        kv_cache=True,
        mixed_batch=True,
        merge_note="prefixes live in the KV cache, not in any weight: there is nothing to fold them into",
        scale_note="a KV prefix is attended to through a softmax, so scaling its keys or values does not scale "
        "its effect (weight 0 would still draw attention to zeroed entries, not remove the prefix)",
        combinations=PROMPT_COMBINATIONS,
        packable=False,
        pack_note="the prefix sits in the KV cache, and transformers keeps packed rows apart only without a "
        "cache: trained on length-grouped padded batches",
    )
    module_prefix = "base_model."  # peft's prompt-learning layout: a task head is saved as base_model.<head>.*

    @hookimpl
    def claims_peft_config(self, data: dict) -> bool:
        # peft writes PREFIX_TUNING for both methods; prefix_projection says which one made it
        return bool(data.get("prefix_projection", False)) == self.config_class.prefix_projection

    # --- what a subclass provides ----------------------------------------------------------------

    def complete(self, config: KVPrefixConfig, geometry: KVGeometry) -> None:
        """Fill config fields that default from the model (beyond the shared ones)."""

    def make_encoder(
        self, config: KVPrefixConfig, geometry: KVGeometry, device: torch.device, dtype: torch.dtype
    ) -> nn.Module:
        raise NotImplementedError

    def extra_state(self, encoder: nn.Module) -> dict[str, torch.Tensor]:
        """Training state peft does not keep (written beside the PEFT file)."""
        return {}

    def load_prefix(self, encoder: nn.Module, prefix: torch.Tensor, extra: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    # --- the hooks -------------------------------------------------------------------------------

    @hookimpl
    def inject(self, model, config: KVPrefixConfig, adapter_name: str) -> None:
        if "." in adapter_name:
            raise MethodError(f"prefix adapter names cannot contain '.', got {adapter_name!r}")
        kv = KVPrefix.of(model)
        kv.geometry.check(config, type(model).__name__)
        g = kv.geometry
        config.num_layers, config.num_attention_heads, config.token_dim = g.num_layers, g.num_kv_heads, g.token_dim
        self.complete(config, g)  # the saved config records what the adapter was made for
        device, dtype = placement(model.get_input_embeddings())  # the prefixes live beside the embeddings
        kv.encoders[adapter_name] = self.make_encoder(config, g, device, dtype)

    @hookimpl
    def trainable_params(self, model, adapter_name: str) -> dict[str, nn.Parameter]:
        encoder = prefix_encoder(model, adapter_name)
        return {f"{STORE}.{adapter_name}.{n}": p for n, p in encoder.named_parameters()}

    @hookimpl
    def save(self, model, adapter_name: str) -> AdapterWeights:
        encoder = prefix_encoder(model, adapter_name)
        with torch.no_grad():
            prefix = encoder().detach().clone().contiguous()  # P collapsed: all peft needs for inference
        extra = {k: v.detach().clone().contiguous() for k, v in self.extra_state(encoder).items()}
        return AdapterWeights({PROMPT_KEY: prefix}, extra)

    @hookimpl
    def load(self, model, config: KVPrefixConfig, adapter_name: str, weights: AdapterWeights) -> None:
        encoder = prefix_encoder(model, adapter_name)
        g = KVPrefix.of(model).geometry
        if set(weights.tensors) != {PROMPT_KEY}:  # core takes a task head out before calling load
            found = ", ".join(sorted(weights.tensors)) or "nothing"
            raise AdapterMismatchError(f"{self.name} adapter must hold one tensor {PROMPT_KEY!r}; found {found}")
        prefix = weights.tensors[PROMPT_KEY]
        expected = (config.num_virtual_tokens, g.prefix_width)
        if tuple(prefix.shape) != expected:
            raise AdapterMismatchError(
                f"{self.name} adapter tensor {PROMPT_KEY} has shape {tuple(prefix.shape)} but this model needs "
                f"{expected} = (num_virtual_tokens, num_layers·2·token_dim) for {g.describe()}: "
                f"was it made for another base model?"
            )
        self.load_prefix(encoder, prefix, dict(weights.extra))

    @hookimpl
    def soft_prompt(self) -> None:
        return None  # prefixes are keys/values inside attention, not input embeddings

    @hookimpl
    def combine(self, parents: list, weights: list[float], combination: str, options: dict) -> tuple[dict, dict]:
        """Merge saved prefixes: ``linear`` = Σ wᵢ Pᵢ of the collapsed ``[k, num_layers·2·token_dim]`` prefixes
        (equal k), ``cat`` = their virtual tokens one after another, each scaled by its weight (k = Σ kᵢ). The
        result is this method's adapter with the new ``num_virtual_tokens`` and no training state beside it (prefix
        tuning: no MLP, it loads as a collapsed prefix)."""
        widths = {(p.config.num_layers, p.config.token_dim) for p in parents}
        if len(widths) > 1:
            raise MethodError(
                f"the {self.name} parents were made for different models (num_layers, token_dim): "
                f"{sorted(widths, key=str)}"
            )
        prefix = combine_prompts(parents, weights, combination, self.name)
        config = {
            **parents[0].config.to_dict(),
            "peft_type": self.peft_type,
            "num_virtual_tokens": int(prefix.shape[0]),
            "num_transformer_submodules": 1,
        }
        return config, {PROMPT_KEY: prefix}
