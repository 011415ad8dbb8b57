"""The hooks core calls for KV-prefix adapters; ``PrefixTuning`` is the MLP-reparameterised one.

``KVPrefixMethod`` is shared with other plugins (P-Tuning v2 subclasses it): a subclass says how to
build its prefix encoder (``make_encoder``: a module whose ``forward()`` returns the prefix
``P: [k, num_layers·2·token_dim]``) and what it keeps beside PEFT's ``prompt_embeddings``.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from peftlab import (
    AdapterMismatchError,
    AdapterWeights,
    Capabilities,
    Method,
    MethodError,
    copy_into,
    hookimpl,
)

from .cache import STORE, KVPrefix
from .config import KVPrefixConfig, PrefixTuningConfig
from .encoder import PrefixEncoder
from .geometry import KVGeometry

PROMPT_KEY = "prompt_embeddings"  # peft's single key for a prompt-learning adapter: the collapsed prefix


def prefix_encoder(model: nn.Module, adapter_name: str) -> nn.Module:
    store = getattr(model, STORE, None)
    if store is None or adapter_name not in store:
        raise MethodError(f"the model has no prefix adapter named {adapter_name!r}")
    return store[adapter_name]


def _device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    weight = model.get_input_embeddings().weight  # the prefixes live beside the token embeddings
    return weight.device, weight.dtype if weight.dtype.is_floating_point else torch.float32


class KVPrefixMethod(Method):
    """Trainable keys/values at the front of every layer's attention cache."""

    config_class = KVPrefixConfig
    peft_type = "PREFIX_TUNING"
    capabilities = Capabilities(
        mergeable=False, stackable=True, kv_cache=True, mixed_batch=True,
        merge_note="prefixes live in the KV cache, not in any weight: there is nothing to fold them into")
    module_prefix = "base_model."  # peft's prompt-learning layout: a task head is saved as base_model.<head>.*

    def claims_peft_config(self, data: dict) -> bool:
        # peft writes PREFIX_TUNING for both methods; prefix_projection says which one made it
        return bool(data.get("prefix_projection", False)) == self.config_class.prefix_projection

    # --- what a subclass provides ----------------------------------------------------------------

    def complete(self, config: KVPrefixConfig, geometry: KVGeometry) -> None:
        """Fill config fields that default from the model (beyond the shared ones)."""

    def make_encoder(self, config: KVPrefixConfig, geometry: KVGeometry, device: torch.device,
                     dtype: torch.dtype) -> nn.Module:
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
        device, dtype = _device_dtype(model)
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
                f"was it made for another base model?")
        self.load_prefix(encoder, prefix, dict(weights.extra))

    @hookimpl
    def soft_prompt(self) -> None:
        return None  # prefixes are keys/values inside attention, not input embeddings


class PrefixTuning(KVPrefixMethod):
    name = "prefix_tuning"
    config_class = PrefixTuningConfig
    description = "Prefix tuning: trainable key/value prefixes in every layer, trained through an MLP"
    # measured on SmolLM2 (capitals-json, 20 steps, batch 8): 3e-3 → eval loss 1.67 → 0.09; 5e-3 → 0.12;
    # 1e-2 → 0.25 with loss spikes; 3e-2 diverges (Adam moves every MLP weight, the prefix moves fan-in times more)
    train_defaults = {"learning_rate": 3e-3}

    def complete(self, config: PrefixTuningConfig, geometry: KVGeometry) -> None:
        if config.encoder_hidden_size is None:
            config.encoder_hidden_size = geometry.token_dim  # peft's default

    def make_encoder(self, config: PrefixTuningConfig, geometry: KVGeometry, device: torch.device,
                     dtype: torch.dtype) -> PrefixEncoder:
        return PrefixEncoder(config.num_virtual_tokens, geometry.token_dim, config.encoder_hidden_size,
                             geometry.prefix_width, config.init_weights == "zero", device, dtype)

    def extra_state(self, encoder: PrefixEncoder) -> dict[str, torch.Tensor]:
        return dict(encoder.state_dict()) if encoder.reparameterised else {}

    def load_prefix(self, encoder: PrefixEncoder, prefix: torch.Tensor, extra: dict[str, torch.Tensor]) -> None:
        if not extra:  # made by peft (or saved after collapsing): P alone, the MLP is gone for good
            encoder.collapse(prefix)
            return
        copy_into(dict(encoder.named_parameters()), extra, what=f"{self.name} (MLP state beside the adapter)")
        with torch.no_grad():
            agree = torch.allclose(encoder().float(), prefix.float().to(encoder().device), rtol=1e-3, atol=1e-5)
        if not agree:  # the PEFT file is what peft would run: it wins over a stale MLP
            warnings.warn(f"{self.name}: the saved MLP does not reproduce {PROMPT_KEY}; using {PROMPT_KEY} "
                          f"and dropping the MLP", stacklevel=2)
            encoder.collapse(prefix)
