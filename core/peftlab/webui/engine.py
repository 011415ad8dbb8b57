"""The chat tab's model: one base model kept loaded, adapters loaded into it once each, replies streamed.

Each adapter gets a unique slot name in the shared base model, so switching adapters is a name lookup, and
``stream_side_by_side`` answers with the adapter and the base model in one batched pass (a mixed-adapter batch).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import AdapterError, MethodError
from ..generate import stream_side_by_side
from ..inspect import nearest_tokens
from ..io import WEIGHTS_FILE, AdapterFiles, load_adapter, read_adapter
from ..models import load_model, resolve_source
from ..plugins import MethodHandle


@dataclass
class LoadedAdapter:
    name: str  # its slot in the shared base model
    path: Path
    method: MethodHandle
    base: str  # the base model it is loaded on (as recorded or given)
    files: AdapterFiles


def recorded_base(files: AdapterFiles) -> str | None:
    """The base model an adapter was trained on (None = the offline default)."""
    base = files.meta.get("base_model") or files.peft_config.get("base_model_name_or_path")
    return None if base in (None, "", "unknown") else str(base)


class ChatEngine:
    """Holds one base model (reloaded only when another base is asked for) and its loaded adapters."""

    def __init__(self) -> None:
        self.lock = threading.RLock()  # one generation or load at a time: routing state is per model
        self.base_key: tuple | None = None
        self.model = None
        self.tokenizer = None
        self.adapters: dict[tuple, LoadedAdapter] = {}
        self._count = 0

    def _base(self, base: str | None, method: MethodHandle, files: AdapterFiles, fresh: bool) -> None:
        where, _ = resolve_source(base)
        special = method.capabilities.needs_quantized_base  # e.g. QLoRA loads its own (quantized) base
        key = (where, method.name if special else None)
        if key == self.base_key and not fresh:
            return
        self.model = self.tokenizer = None
        self.adapters.clear()
        self.base_key = None
        self.model, self.tokenizer = load_model(base, method=method if special else None,
                                                method_config=files.config if special else None)
        self.base_key = key

    def load(self, path: str | os.PathLike, base: str | None = None) -> LoadedAdapter:
        """Load the adapter folder ``path`` (once) on ``base`` (default: the base it records)."""
        path = Path(path).expanduser()
        files = read_adapter(path)  # validates the folder: AdapterError / ConfigError name the problem
        task = files.peft_config.get("task_type") or "CAUSAL_LM"
        if task != "CAUSAL_LM":
            raise AdapterError(f"{path} is a {task} adapter (a classifier); chat needs a CAUSAL_LM adapter")
        base = base or recorded_base(files)
        weights = path / WEIGHTS_FILE
        key = (str(path.resolve()), weights.stat().st_mtime_ns, base)
        with self.lock:
            hit = self.adapters.get(key)
            if hit is not None and self.model is not None:
                return hit
            method = files.method
            stackable = method.capabilities.stackable and all(
                a.method.capabilities.stackable for a in self.adapters.values())
            self._base(base, method, files, fresh=not stackable)  # a non-stackable method gets a fresh base
            self._count += 1
            name = f"chat{self._count}"
            try:
                load_adapter(self.model, path, name, activate=False)
            except Exception:
                self.base_key = None  # the model may hold a half-loaded adapter: start fresh next time
                raise
            loaded = LoadedAdapter(name, path, method, base or "SmolLM2-135M-Instruct (default)", files)
            self.adapters[key] = loaded
            return loaded

    def nearest_tokens(self, adapter: LoadedAdapter, top_k: int = 5) -> list[list[tuple[str, float]]] | None:
        """The vocabulary tokens nearest each virtual token of ``adapter``'s soft prompt; ``None`` when the
        method has no soft prompt in the input-embedding space."""
        with self.lock:
            if not adapter.method.implements("soft_prompt"):
                return None
            try:
                return nearest_tokens(self.model, self.tokenizer, adapter.name, top_k=top_k)
            except MethodError:  # the method says it has none (prefixes live in attention, not in the input)
                return None

    def stream(self, adapter: LoadedAdapter, message: str, max_new_tokens: int = 128) -> Iterator[tuple[str, str]]:
        """Yield (base reply, adapted reply) so far, token by token."""
        with self.lock:
            if adapter.method.capabilities.mixed_batch:  # one batched pass: row 0 adapted, row 1 base
                yield from _drained((t[1], t[0]) for t in stream_side_by_side(
                    self.model, self.tokenizer, message, [adapter.name, None], max_new_tokens=max_new_tokens))
                return
            adapted = ""
            for texts in _drained(stream_side_by_side(self.model, self.tokenizer, message, [adapter.name],
                                                      max_new_tokens=max_new_tokens)):
                adapted = texts[0]
                yield "", adapted
            for texts in _drained(stream_side_by_side(self.model, self.tokenizer, message, [None],
                                                      max_new_tokens=max_new_tokens)):
                yield texts[0], adapted


def _drained(gen: Iterator) -> Iterator:
    """Pass items through; if the consumer stops early, still run ``gen`` to its end (so its generation
    thread ends before the next request uses the model)."""
    it = iter(gen)
    try:
        for item in it:  # noqa: UP028 (``yield from`` would close ``it`` early instead of draining it)
            yield item
    finally:
        for _ in it:
            pass
