"""Module surgery every method plugin needs: swap a module by path, keep shared state off the module tree,
restrict an update to the rows an adapter acts on, and place new weights beside the ones they adapt."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..state import AdapterState, adapter_state

STATE = "_peftlab_state"  # the model's AdapterState, kept on each module that routes (a plain attribute)


def replace_module(model: nn.Module, path: str, new: nn.Module) -> nn.Module:
    """Put ``new`` where ``path`` is in ``model`` (a wrapper around the layer there, or the layer itself back
    when unloading) and return the module it replaced."""
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    old = getattr(parent, child)
    setattr(parent, child, new)
    return old


def keep(module: nn.Module, name: str, value: Any) -> Any:
    """Set ``module.<name> = value`` as a plain attribute: not a submodule, parameter or buffer, so it is not
    moved by ``.to()``, not saved by ``save_pretrained`` and not listed by ``named_modules``. A deep copy of
    the model copies it with the model (shared objects stay shared within the copy). Returns ``value``."""
    module.__dict__[name] = value
    return value


def share_state(module: nn.Module, model: nn.Module) -> AdapterState:
    """Give ``module`` (a layer your method adds or hooks) the model's routing state; ``rows`` reads it."""
    return keep(module, STATE, adapter_state(model))


def rows(module: nn.Module, adapter_name: str, device: torch.device | str | None = None):
    """Which rows of the current batch adapter ``adapter_name`` acts on, for a module given ``share_state``:
    ``None`` (off: inactive, or merged into the weights), ``True`` (every row) or a bool tensor ``[batch]``."""
    return module.__dict__[STATE].select(adapter_name, device)


def for_rows(update: torch.Tensor, rows: bool | torch.Tensor) -> torch.Tensor:
    """``update`` (batch first) kept on the rows an adapter acts on and zero on the others.

    ``rows`` is what ``rows()`` returned, other than ``None``: ``True`` returns ``update`` unchanged."""
    if rows is True:
        return update
    return update * rows.view(-1, *([1] * (update.dim() - 1))).to(update.dtype)


def placement(weights: nn.Module | torch.Tensor) -> tuple[torch.device, torch.dtype]:
    """Device and dtype for an adapter's new parameters: those of the weights they adapt (a module's first
    parameter, or a tensor). A quantized base (4-bit / 8-bit integer storage) gets float32 adapters, which is
    what trains; a module without parameters gives the CPU and float32."""
    w = weights if isinstance(weights, torch.Tensor) else next(weights.parameters(), None)
    if w is None:
        return torch.device("cpu"), torch.float32
    return w.device, (w.dtype if w.dtype.is_floating_point else torch.float32)


def context_size(model: nn.Module) -> int | None:
    """The model's context in positions (``max_position_embeddings``, GPT-2's ``n_positions``, ...), or ``None``."""
    cfg = model.config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def layer_stack(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """``(path, ModuleList)`` of the model's transformer layers (the list of ``num_hidden_layers`` modules), or
    ``None`` when its config does not say how many there are or no list has that many."""
    n = getattr(model.config, "num_hidden_layers", None)
    for path, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return path, module
    return None
