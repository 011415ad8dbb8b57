"""Which adapters a model holds, which are active, and which rows of a batch use which adapter.

One ``AdapterState`` hangs off each adapted model. Method layers keep a reference to it and ask
``state.select(adapter_name, device)`` in ``forward``:

* ``None``  – the adapter does not act on this batch (inactive, or merged into the weights);
* ``True``  – it acts on every row;
* a bool tensor ``[batch]`` – it acts on those rows only (a mixed-adapter batch).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

ATTR = "_peftlab_state"


@dataclass
class AdapterEntry:
    method: str
    config: Any  # the method's MethodConfig
    merged: bool = False
    weight: Any = 1.0  # what set_weight gave its method's scale hook: a float or a 0-dim tensor (1 = as trained)


class AdapterState:
    def __init__(self) -> None:
        self.adapters: dict[str, AdapterEntry] = {}
        self.active: list[str] = []
        self.groups: dict[str, list[str]] = {}  # a loaded recipe's name → its members' adapter names
        self.rows: list[str | None] | None = None
        self._masks: dict[tuple[str, Any], torch.Tensor] = {}

    def select(self, adapter_name: str, device: torch.device | str | None = None) -> bool | torch.Tensor | None:
        entry = self.adapters.get(adapter_name)
        if entry is None or entry.merged:
            return None
        if self.rows is None:
            return True if adapter_name in self.active else None
        key = (adapter_name, str(device))
        mask = self._masks.get(key)
        if mask is None:
            mask = torch.tensor(
                [r == adapter_name or adapter_name in self.groups.get(r, ()) for r in self.rows],
                dtype=torch.bool,
                device=device,
            )
            self._masks[key] = mask
        if not bool(mask.any()):
            return None
        return True if bool(mask.all()) else mask

    def set_rows(self, rows: Sequence[str | None] | None) -> None:
        self.rows = None if rows is None else list(rows)
        self._masks.clear()

    def expand(self, names: Sequence[str]) -> list[str]:
        """``names`` with each group (a loaded recipe) replaced by its members; an unknown name is a ``KeyError``."""
        out: list[str] = []
        for n in names:
            members = self.groups.get(n, [n])
            for m in members:
                if m not in self.adapters:
                    raise KeyError(f"no adapter named {n!r}; loaded: {sorted([*self.adapters, *self.groups])}")
                if m not in out:
                    out.append(m)
        return out

    def __getstate__(self) -> dict:  # deep copies and pickles carry no cached tensors
        return {**self.__dict__, "_masks": {}}


def adapter_state(model: torch.nn.Module, create: bool = True) -> AdapterState:
    """The ``AdapterState`` of ``model`` (created on first use)."""
    state = model.__dict__.get(ATTR)
    if state is None and create:
        state = AdapterState()
        model.__dict__[ATTR] = state  # a plain attribute: not a module, not saved by save_pretrained
    return state


def set_active(model: torch.nn.Module, names: Sequence[str] | str | None) -> None:
    """Activate these adapters (all others inactive). ``None`` or ``[]`` = the base model. A loaded recipe's name
    (a group) stands for all its members."""
    state = adapter_state(model)
    names = [names] if isinstance(names, str) else list(names or [])
    state.active = state.expand(names)


@contextlib.contextmanager
def mixed_batch(model: torch.nn.Module, rows: Sequence[str | None]) -> Iterator[None]:
    """Within this block, row ``i`` of every batch uses adapter ``rows[i]`` (``None`` = base model; a loaded recipe's
    name = all its members on that row)."""
    state = adapter_state(model)
    unknown = sorted({r for r in rows if r is not None and r not in state.adapters and r not in state.groups})
    if unknown:
        raise KeyError(f"no adapter named {unknown[0]!r}; loaded: {sorted([*state.adapters, *state.groups])}")
    previous = state.rows
    state.set_rows(rows)
    try:
        yield
    finally:
        state.set_rows(previous)


@contextlib.contextmanager
def active_adapters(model: torch.nn.Module, names: Sequence[str] | str | None) -> Iterator[None]:
    """Temporarily activate ``names`` (``None`` = the base model)."""
    state = adapter_state(model)
    previous = list(state.active)
    set_active(model, names)
    try:
        yield
    finally:
        state.active = previous
