"""How prefixes reach attention without core (or the model) knowing: through the KV cache.

One ``KVPrefix`` per model holds the prefix encoders of every KV-prefix adapter (prefix tuning,
P-Tuning v2, ...) and two hooks on the model's backbone (``model.base_model``, whose forward takes
the cache, ``attention_mask`` and ``position_ids`` under those names for every head; the cache is
``past_key_values`` up to transformers 5.23 and ``cache`` from 5.24, in arguments and outputs alike:
``cache_name`` reads which one a model takes, and both are read wherever a cache may come in):

* before forward, when no cache or an empty one is passed, it fills a cache with each layer's prefix
  keys/values ``[batch, kv_heads, K, head_dim]`` (the prefixes of the adapters acting on the batch,
  side by side), prepends the prefix to the attention mask, and moves positions past the prefix, as
  peft does. A cache that already holds a prefix (later ``generate`` steps, or a caller decoding by
  hand) only gets the mask and positions extended the same way.
* after forward, a cache made for a ``use_cache=False`` call is dropped from the output, as the bare
  model would not return one (``generate`` would otherwise feed it back).

In a mixed batch each row attends only to the slots of its own adapter's prefix (the other slots are
masked out) and its positions start after its own prefix, so a row computes what it would alone.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn
from transformers import Cache, DynamicCache

from ..errors import MethodError
from ..state import adapter_state
from .kv_geometry import KVGeometry
from .modules import context_size

ATTR = "_peftlab_kv_prefix"  # on the model: its KVPrefix (a plain attribute, not a submodule)
STORE = "peftlab_prefix"  # on the model: the ModuleDict of prefix encoders, one per adapter
SLOTS = "_peftlab_prefix_slots"  # on a cache: the PrefixSlots at its front
CACHE_NAMES = ("cache", "past_key_values")  # the KV cache's argument and output field: 5.24+, then up to 5.23


def cache_name(forward) -> str | None:
    """The name under which ``forward`` takes the KV cache (``cache`` from transformers 5.24, ``past_key_values``
    before), or None when it takes none."""
    params = inspect.signature(forward).parameters
    return next((name for name in CACHE_NAMES if name in params), None)


def cache_key(kwargs: dict, default: str) -> str:
    """The key of ``kwargs`` that holds the cache: the one a caller set (5.24 still takes the old name, with a
    deprecation warning), else ``default``, the model's own name (so a cache written back goes where it came from)."""
    given = [name for name in CACHE_NAMES if kwargs.get(name) is not None]
    if default in given or not given:
        return default
    return given[0]


def output_cache(output):
    """The cache a model output carries, under either name (``None`` when it carries none)."""
    if not isinstance(output, dict):
        return getattr(output, "past_key_values", None)
    return next((output[name] for name in CACHE_NAMES if name in output), None)


@dataclass
class PrefixSlots:
    """The ``K`` virtual-token slots at the front of a cache, and which rows may attend to which."""

    valid: torch.Tensor  # bool [batch, K]: row b attends to slot j
    counts: torch.Tensor  # long [batch]: prefix tokens row b attends to (its positions start there)
    uniform: bool  # every row attends to every slot (the common case: nothing per-row to do)
    no_cache_call: bool  # made for a use_cache=False call: never handed back to the caller

    @property
    def K(self) -> int:
        return self.valid.shape[1]


class KVPrefix:
    """The prefixes of one model and the hooks that feed them through its KV cache."""

    def __init__(self, model: nn.Module) -> None:
        backbone = model.base_model
        params = inspect.signature(backbone.forward).parameters
        self.cache_name = cache_name(backbone.forward)
        if self.cache_name is None:
            raise MethodError(
                f"{type(model).__name__}: its attention takes no KV cache (its forward has no cache or "
                f"past_key_values), so there is nowhere to put key/value prefixes; use a method that changes weights "
                f"or inputs"
            )
        self.arg_names = [n for n, p in params.items() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        self.takes_positions = "position_ids" in params
        self.geometry = KVGeometry.of(model)
        self.n_ctx = context_size(model)
        self.cache_config = model.config
        self.state = adapter_state(model)
        if not isinstance(getattr(model, STORE, None), nn.ModuleDict):
            model.add_module(STORE, nn.ModuleDict())
        self.encoders: nn.ModuleDict = getattr(model, STORE)
        backbone.register_forward_pre_hook(self._before, with_kwargs=True)
        backbone.register_forward_hook(self._after, with_kwargs=True, always_call=True)

    @classmethod
    def of(cls, model: nn.Module) -> KVPrefix:
        """The model's KVPrefix, made (and its hooks registered) on first use."""
        prefix = model.__dict__.get(ATTR)
        if prefix is None:
            prefix = cls(model)
            model.__dict__[ATTR] = prefix
        return prefix

    # --- the hooks -----------------------------------------------------------------------------

    def _before(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        kwargs = {**dict(zip(self.arg_names, args)), **kwargs}  # name positional arguments
        key = cache_key(kwargs, self.cache_name)
        cache = kwargs.get(key)
        slots = getattr(cache, SLOTS, None)
        empty = cache is None or (isinstance(cache, Cache) and cache.get_seq_length() == 0)
        if not empty and slots is None:
            return None  # a cache of the bare model's own tokens: not ours to change
        batch, length = self._input_shape(kwargs)
        if empty:
            acting = self._acting(batch)
            if not acting:
                return None  # no prefix adapter acts on this batch
            if module.training and getattr(module, "gradient_checkpointing", False):
                raise MethodError(
                    "gradient checkpointing drops the KV cache, and with it the prefixes: "
                    "turn it off to train a prefix adapter"
                )
            slots = self._slots(acting, batch, no_cache_call=cache is None and kwargs.get("use_cache") is False)
            cache = self._fill(cache, acting, batch)
            setattr(cache, SLOTS, slots)
            kwargs[key] = cache
            past = 0
        else:
            past = cache.get_seq_length() - slots.K  # real tokens already in the cache
        if self.n_ctx is not None and slots.K + past + length > self.n_ctx:
            raise MethodError(
                f"prefix ({slots.K} virtual tokens) + input ({past + length} tokens) = "
                f"{slots.K + past + length} positions exceed the model's context of {self.n_ctx}; "
                f"shorten the input or use fewer virtual tokens"
            )
        kwargs["attention_mask"] = self._mask(kwargs.get("attention_mask"), slots, past + length)
        positions = self._positions(kwargs.get("position_ids"), slots, past, length)
        if positions is not None:
            kwargs["position_ids"] = positions
        return (), kwargs

    def _after(self, module: nn.Module, args: tuple, kwargs: dict, output):
        slots = getattr(output_cache(output), SLOTS, None)
        if slots is None or not slots.no_cache_call:
            return None
        return type(output)(**{k: v for k, v in output.items() if k not in CACHE_NAMES})

    # --- the pieces ----------------------------------------------------------------------------

    @staticmethod
    def _input_shape(kwargs: dict) -> tuple[int, int]:
        x = kwargs.get("input_ids")
        if x is None:
            x = kwargs.get("inputs_embeds")
        if x is None:
            raise MethodError("prefix adapters need input_ids or inputs_embeds to size the prefix")
        return x.shape[0], x.shape[1]

    def _acting(self, batch: int) -> list[tuple[nn.Module, bool | torch.Tensor]]:
        """``[(encoder, rows)]`` of the adapters acting on this batch: rows is True or a bool mask."""
        acting = []
        for name, encoder in self.encoders.items():
            rows = self.state.select(name, self._device(encoder))
            if rows is None:
                continue
            if rows is not True and rows.shape[0] != batch:
                raise MethodError(f"mixed_batch names {rows.shape[0]} rows but the batch has {batch}")
            acting.append((encoder, rows))
        return acting

    @staticmethod
    def _device(encoder: nn.Module) -> torch.device:
        return next(encoder.parameters()).device

    def _slots(self, acting: list, batch: int, no_cache_call: bool) -> PrefixSlots:
        valid = []
        for encoder, rows in acting:
            k = encoder.num_virtual_tokens
            device = self._device(encoder)
            valid.append(
                torch.ones(batch, k, dtype=torch.bool, device=device)
                if rows is True
                else rows[:, None].expand(batch, k)
            )
        valid = torch.cat(valid, dim=1)
        uniform = all(rows is True for _, rows in acting)
        return PrefixSlots(valid, valid.sum(dim=1), uniform, no_cache_call)

    def _fill(self, cache: Cache | None, acting: list, batch: int) -> Cache:
        """Put every layer's prefix keys and values into ``cache`` (a new DynamicCache when None)."""
        g = self.geometry
        per_layer = []
        for encoder, _ in acting:
            P = encoder()  # [k, num_layers·2·token_dim], laid out (layer, key|value, head, head_dim) like peft's
            k = P.shape[0]
            per_layer.append(P.view(k, g.num_layers, 2, g.num_kv_heads, g.head_dim).permute(1, 2, 3, 0, 4))
        kv = torch.cat(per_layer, dim=3)  # [layers, 2, kv_heads, K, head_dim]: the adapters' prefixes side by side
        kv = kv.unsqueeze(2).expand(-1, -1, batch, -1, -1, -1)  # every row gets the same keys; masks pick per row
        if cache is None:
            cache = DynamicCache(config=self.cache_config)
        for layer in range(g.num_layers):
            cache.update(kv[layer, 0], kv[layer, 1], layer)
        return cache

    @staticmethod
    def _mask(mask: torch.Tensor | None, slots: PrefixSlots, length: int) -> torch.Tensor | None:
        """The attention mask over [prefix slots, real tokens]."""
        if mask is None:
            if slots.uniform:
                return None  # everything is attended to: no mask needed
            ones = torch.ones(slots.valid.shape[0], length, dtype=torch.long, device=slots.valid.device)
            return torch.cat([slots.valid.long(), ones], dim=1)
        if mask.dim() != 2:
            raise MethodError(
                f"prefix adapters need a 2D attention mask [batch, tokens], got shape "
                f"{tuple(mask.shape)} (a static/compiled cache is not supported)"
            )
        if mask.shape[1] == length:
            return torch.cat([slots.valid.to(device=mask.device, dtype=mask.dtype), mask], dim=1)
        if mask.shape[1] == slots.K + length:
            return mask  # the caller counted the prefix already
        raise MethodError(
            f"attention_mask covers {mask.shape[1]} tokens but the input has {length} "
            f"(after a prefix of {slots.K} virtual tokens)"
        )

    def _positions(
        self, positions: torch.Tensor | None, slots: PrefixSlots, past: int, length: int
    ) -> torch.Tensor | None:
        """Positions start after the prefix, as peft has it (the model's default does so for a full prefix)."""
        if positions is not None:
            if slots.uniform:
                return positions + slots.K
            return positions + slots.counts.to(positions.device)[:, None]
        if slots.uniform or not self.takes_positions:
            return None
        steps = torch.arange(past, past + length, device=slots.counts.device)
        return slots.counts[:, None] + steps[None, :]  # row b starts after its own prefix
