"""How virtual tokens get into a model that knows nothing of them: one forward pre-hook per model.

Every virtual-token adapter (Prompt Tuning, P-Tuning, ...) registers a *source* here: a module whose
``forward()`` returns its ``[k, d]`` prompt in input-embedding space. On each call of the model, the
hook asks the routing state which sources act on which rows and rewrites the call:

* first step (no KV cache, or an empty one; the call's ``cache`` from transformers 5.24, its
  ``past_key_values`` before): prepend ``K`` slots to the input, ``K`` = the longest prompt of any row.
  Row r holds ``K - k_r`` filler slots (attention 0) followed by its ``k_r`` virtual tokens; a row
  with no adapter holds only fillers, so it computes what the base model computes. ``input_ids`` grow
  by ``K`` placeholder ids and a forward hook on the input-embedding layer swaps the prompts in for
  them (so models that read ``input_ids`` after embedding them, like ``*ForSequenceClassification``
  pooling the last non-pad token, still see real ids); ``inputs_embeds`` simply grow by the prompts.
  Labels get ``-100`` for the new slots.
* later steps (the KV cache already holds the ``K`` slots): nothing is prepended; the attention
  mask grows by the same ``K`` columns and positions shift as on the first step.

* outputs: the logits (and hidden states) of the ``K`` slots are dropped, so a call returns one
  position per input token, as without the adapter (``peft`` returns them too; the loss is the same).

Positions: virtual token i of row r sits at position i, and a real token at position p (as the
caller or ``generate`` gave it, or its index) moves to ``p + k_r``. Without padding this is
``arange(k + L)``, what ``peft`` computes.
"""

from __future__ import annotations

import inspect
import threading
from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput

from ..adapters import model_task
from ..errors import MethodError
from ..state import adapter_state
from .kv_prefix import CACHE_NAMES
from .modules import context_size

ATTR = "_peftlab_virtual_tokens"  # the controller, a plain attribute of the model (not a submodule)
SOURCES = "peftlab_prompt_encoder"  # nn.ModuleDict {adapter name: source}: moves and saves with the model


@dataclass
class Plan:
    """What one call prepends: ``K`` slots per row; ``lengths[r]`` of them are row r's virtual tokens."""

    K: int
    lengths: torch.Tensor | None  # [B] long, or None when every row gets the same K tokens
    picks: list[tuple[str, bool | torch.Tensor]]  # (adapter name, True or its bool row mask), in order

    @property
    def uniform(self) -> bool:
        return self.lengths is None

    def virtual_mask(self, B: int, device) -> torch.Tensor:
        """``[B, K]`` bool: True on virtual tokens, False on filler slots."""
        if self.uniform:
            return torch.ones(B, self.K, dtype=torch.bool, device=device)
        slot = torch.arange(self.K, device=device)
        return slot >= (self.K - self.lengths.to(device))[:, None]

    def virtual_positions(self, B: int, device) -> torch.Tensor:
        """``[B, K]``: virtual token i of a row at position i, fillers at 0 (like left padding)."""
        slot = torch.arange(self.K, device=device).expand(B, -1)
        if self.uniform:
            return slot
        return (slot - (self.K - self.lengths.to(device))[:, None]).clamp(min=0)

    def shift(self, device) -> torch.Tensor | int:
        """How far each row's real tokens move: its own number of virtual tokens."""
        return self.K if self.uniform else self.lengths.to(device)[:, None]


def _cache_length(cache) -> int:
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    if isinstance(cache, (tuple, list)) and cache and cache[0] is not None:  # legacy (key, value) tuples
        return int(cache[0][0].shape[-2])
    return 0


class VirtualTokens:
    """The one controller per model that prepends every active virtual-token adapter's prompt."""

    def __init__(self, model: nn.Module) -> None:
        self.params = [p for p in inspect.signature(model.forward).parameters if p not in ("args", "kwargs")]
        self.task = model_task(model)
        self.context = context_size(model)
        pad = getattr(model.config, "pad_token_id", None)
        self.placeholder = 1 if pad == 0 else 0  # any real id but the pad id: pooling must not skip the slots
        self._pending: dict[int, torch.Tensor] = {}  # thread id → prompts the embedding hook swaps in
        self._prepended: dict[int, tuple[int, int]] = {}  # thread id → (K, K + L) of the call in flight
        self.handles = [
            model.register_forward_pre_hook(self._pre_hook, with_kwargs=True),
            model.register_forward_hook(self._post_hook, always_call=True),
            model.get_input_embeddings().register_forward_hook(self._embedding_hook),
        ]

    # --- registration -----------------------------------------------------------------------------

    @classmethod
    def of(cls, model: nn.Module) -> VirtualTokens:
        """The model's controller, installed (hooks and the ``peftlab_prompt_encoder`` dict) on first use."""
        vt = model.__dict__.get(ATTR)
        if vt is None:
            if model.get_input_embeddings() is None:
                raise MethodError(f"{type(model).__name__} has no input embedding layer for virtual tokens")
            vt = cls(model)
            model.__dict__[ATTR] = vt
            model.add_module(SOURCES, nn.ModuleDict())
        return vt

    @staticmethod
    def sources(model: nn.Module) -> nn.ModuleDict:
        return getattr(model, SOURCES, None) or nn.ModuleDict()

    @classmethod
    def add(cls, model: nn.Module, adapter_name: str, source: nn.Module) -> None:
        """Serve ``source`` (``forward() → [k, d]``, attribute ``num_virtual_tokens``) for ``adapter_name``."""
        cls.of(model)
        getattr(model, SOURCES)[adapter_name] = source

    @classmethod
    def source(cls, model: nn.Module, adapter_name: str) -> nn.Module:
        sources = cls.sources(model)
        if adapter_name not in sources:
            raise MethodError(f"adapter {adapter_name!r} has no virtual tokens in this model")
        return sources[adapter_name]

    def remove(self, model: nn.Module) -> None:
        """Take the hooks out (the model keeps its ``peftlab_prompt_encoder`` modules)."""
        for handle in self.handles:
            handle.remove()
        model.__dict__.pop(ATTR, None)

    # --- which adapters act on this batch ---------------------------------------------------------

    def plan(self, model: nn.Module, B: int, device) -> Plan | None:
        state = adapter_state(model)
        picks = []
        for name in self.sources(model):
            rows = state.select(name, device)  # None: off; True: every row; bool[batch]: some rows
            if rows is None:
                continue
            if rows is not True and rows.shape[0] != B:
                raise MethodError(f"mixed_batch names {rows.shape[0]} rows but the batch has {B}")
            picks.append((name, rows))
        if not picks:
            return None
        sources = self.sources(model)
        if all(rows is True for _, rows in picks):
            return Plan(sum(sources[n].num_virtual_tokens for n, _ in picks), None, picks)
        lengths = torch.zeros(B, dtype=torch.long, device=device)
        for name, rows in picks:
            lengths += sources[name].num_virtual_tokens * (rows.long() if rows is not True else 1)
        return Plan(int(lengths.max()), lengths, picks)

    def prompts(self, model: nn.Module, plan: Plan, B: int, dtype: torch.dtype, device) -> torch.Tensor:
        """``[B, K, d]``: each row's prompts, concatenated in adapter order, right-aligned after zero fillers."""
        sources = self.sources(model)
        P = {name: sources[name]() for name, _ in plan.picks}  # one encoder pass per adapter, not per row
        if plan.uniform:
            return torch.cat([P[name] for name, _ in plan.picks]).to(device, dtype).expand(B, -1, -1)
        d = next(iter(P.values())).shape[-1]
        rows = []
        for r in range(B):
            parts = [P[name] for name, sel in plan.picks if sel is True or bool(sel[r])]
            filler = torch.zeros(plan.K - sum(p.shape[0] for p in parts), d, device=device, dtype=dtype)
            rows.append(torch.cat([filler, *(p.to(device, dtype) for p in parts)]))
        return torch.stack(rows)

    # --- the hooks --------------------------------------------------------------------------------

    def _pre_hook(self, model: nn.Module, args: tuple, kwargs: dict):
        if not self.sources(model):
            return None
        kwargs = {**dict(zip(self.params, args)), **kwargs}
        ids, embeds = kwargs.get("input_ids"), kwargs.get("inputs_embeds")
        x = embeds if embeds is not None else ids
        if x is None:
            return None  # nothing to prepend to; let the model raise its own error
        B, L, device = x.shape[0], x.shape[1], x.device
        plan = self.plan(model, B, device)
        if plan is None:
            return None  # no virtual-token adapter acts on this batch: the call is untouched
        past = _cache_length(next((kwargs[n] for n in CACHE_NAMES if kwargs.get(n) is not None), None))
        first = past == 0
        self._check_context(plan.K, past, L, first)
        if first:
            self._prepend(model, kwargs, plan, B, L, device)
            self._prepended[threading.get_ident()] = (plan.K, plan.K + L)
        else:
            self._extend(kwargs, plan, B, L, past, device)
        return (), kwargs

    def _prepend(self, model: nn.Module, kw: dict, plan: Plan, B: int, L: int, device) -> None:
        """First step: K slots in front of the input, the mask, the positions, the labels."""
        K = plan.K
        embeds = kw.get("inputs_embeds")
        if embeds is not None:
            kw["inputs_embeds"] = torch.cat([self.prompts(model, plan, B, embeds.dtype, device), embeds], dim=1)
        else:
            ids = kw["input_ids"]
            weight = model.get_input_embeddings().weight
            self._pending[threading.get_ident()] = self.prompts(model, plan, B, weight.dtype, weight.device)
            kw["input_ids"] = torch.cat([ids.new_full((B, K), self.placeholder), ids], dim=1)
        mask = kw.get("attention_mask")
        if mask is not None or not plan.uniform:
            kw["attention_mask"] = self._grow_mask(mask, plan, B, L, device)
        pos = self._positions(kw.get("position_ids"), mask, B, L)
        if pos is not None or not plan.uniform:  # uniform, unpadded: the model's arange(K + L) is already right
            base = torch.arange(L, device=device).expand(B, -1) if pos is None else pos
            kw["position_ids"] = torch.cat([plan.virtual_positions(B, device), base + plan.shift(device)], dim=1)
        if kw.get("cache_position") is not None:  # older transformers index the cache with it
            kw["cache_position"] = torch.arange(K + L, device=device)
        if kw.get("token_type_ids") is not None:
            tt = kw["token_type_ids"]
            kw["token_type_ids"] = torch.cat([tt.new_zeros((B, K)), tt], dim=1)
        labels = kw.get("labels")
        if labels is not None and self.task == "CAUSAL_LM" and labels.dim() == 2:
            kw["labels"] = torch.cat([labels.new_full((B, K), -100), labels], dim=1)  # no loss on virtual tokens

    def _extend(self, kw: dict, plan: Plan, B: int, L: int, past: int, device) -> None:
        """Later steps: the cache holds the K slots already; mask and positions must account for them."""
        mask = kw.get("attention_mask")
        if mask is not None or not plan.uniform:
            kw["attention_mask"] = self._grow_mask(mask, plan, B, past - plan.K + L, device)
        pos = self._positions(kw.get("position_ids"), mask, B, L)
        if pos is not None or not plan.uniform:  # uniform, unpadded: the model counts from the cache length
            base = torch.arange(past - plan.K, past - plan.K + L, device=device).expand(B, -1) if pos is None else pos
            kw["position_ids"] = base + plan.shift(device)
        if kw.get("cache_position") is not None:
            kw["cache_position"] = torch.arange(past, past + L, device=device)

    def _grow_mask(self, mask: torch.Tensor | None, plan: Plan, B: int, length: int, device) -> torch.Tensor:
        if mask is None:
            mask = torch.ones(B, length, dtype=torch.long, device=device)
        if mask.dim() != 2:
            raise MethodError(
                f"virtual-token adapters need a 2D attention mask [batch, length]; got a {mask.dim()}D mask"
            )
        return torch.cat([plan.virtual_mask(B, mask.device).to(mask.dtype), mask], dim=1)

    @staticmethod
    def _positions(pos: torch.Tensor | None, mask: torch.Tensor | None, B: int, L: int):
        """The real tokens' positions before the shift: as given, else counted over the attention mask (what
        ``generate`` does, so left padding leaves no gap between a prompt and its text), else ``None``."""
        if pos is None and mask is not None and mask.dim() == 2:
            pos = (mask.long().cumsum(-1) - 1).clamp(min=0)[:, -L:]  # pads sit at 0, like generate's
        if pos is None:
            return None
        if pos.dim() != 2:
            raise MethodError(f"virtual-token adapters need position_ids of shape [batch, length]; got {pos.dim()}D")
        return pos.expand(B, -1) if pos.shape[0] == 1 else pos

    def _check_context(self, K: int, past: int, L: int, first: bool) -> None:
        total = past + L + (K if first else 0)
        if self.context is not None and total > self.context:
            text = past - (0 if first else K) + L
            raise MethodError(
                f"the soft prompt ({K} virtual tokens) plus the input ({text} tokens) need {total} positions, more "
                f"than the model's context of {self.context} (max_position_embeddings); shorten the input, generate "
                f"fewer tokens or use fewer virtual tokens"
            )

    def _embedding_hook(self, module: nn.Module, args: tuple, output: torch.Tensor):
        P = self._pending.pop(threading.get_ident(), None)
        if P is None:
            return None
        K = P.shape[1]
        return torch.cat([P.to(output.dtype), output[:, K:]], dim=1)  # the placeholders' embeddings → the prompts

    def _post_hook(self, model: nn.Module, args: tuple, output):
        tid = threading.get_ident()
        self._pending.pop(tid, None)  # unused if the model failed before embedding its input
        lengths = self._prepended.pop(tid, None)
        if lengths is None or not isinstance(output, ModelOutput):
            return None
        K, total = lengths
        logits = output.get("logits")
        if isinstance(logits, torch.Tensor) and logits.dim() == 3 and logits.shape[1] == total:
            output["logits"] = logits[:, K:]  # one logit per input token, as without the adapter
        hidden = output.get("hidden_states")
        if isinstance(hidden, tuple) and all(
            isinstance(h, torch.Tensor) and h.dim() == 3 and h.shape[1] == total for h in hidden
        ):
            output["hidden_states"] = tuple(h[:, K:] for h in hidden)
        return output

    def __getstate__(self) -> dict:  # a deep copy of the model carries no half-finished call
        return {**self.__dict__, "_pending": {}, "_prepended": {}}
