"""The chat tab's model: one base model kept loaded, adapters loaded into it once each, replies streamed.

Each adapter gets a unique slot name in the shared base model, so switching adapters is a name lookup, and a
reply is the adapter and the base model in one batched pass (a mixed-adapter batch) where the method allows.

Several browser sessions share the engine. The model is only touched under ``lock``, and the lock is only ever
held inside one frame of one thread (``with self.lock:``), never across a ``yield``: Gradio runs each step of a
streaming handler on whichever worker thread is free and closes the generator from yet another thread when the
browser goes away, so a lock held across a yield was released by a thread that did not own it ("cannot release
un-acquired lock") and stayed held forever. A reply is generated on its own thread, which takes the lock,
generates and releases it; ``stream`` only reads that thread's queue, and closing ``stream`` early cancels the
generation at the next token.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import AdapterError, MethodError
from ..generate import GREEDY, Messages, Sampling, generate_rows
from ..inspect import nearest_tokens
from ..io import WEIGHTS_FILE, AdapterFiles, load_adapter, read_adapter
from ..method import Capabilities
from ..models import load_model, resolve_source
from ..plugins import MethodHandle
from ..recipe import RECIPE_FILE, is_recipe, read_recipe, representative


@dataclass
class LoadedAdapter:
    name: str  # its slot in the shared base model
    path: Path
    method: MethodHandle | StackView  # a recipe's: what its parents share
    base: str  # the base model it is loaded on (as recorded or given)
    files: AdapterFiles
    requested_base: str | None = None  # the base asked for (None = the recorded one): to load it again


def recorded_base(files: AdapterFiles) -> str | None:
    """The base model an adapter was trained on (None = the offline default)."""
    base = files.meta.get("base_model") or files.peft_config.get("base_model_name_or_path")
    return None if base in (None, "", "unknown") else str(base)


@dataclass
class StackView:
    """What the chat needs of a loaded recipe's "method": a name and the capabilities all its parents share (one
    batched pass only if every parent's method can mix batches). It has no hooks of its own."""

    name: str
    capabilities: Capabilities
    plugin: str = "peftlab"
    description: str = "a stack of adapters (composition recipe)"

    def implements(self, hook: str) -> bool:
        return False


def stack_view(path: Path) -> StackView:
    from ..plugins import get_method

    parents = read_recipe(path).parents
    caps = [get_method(p.method).capabilities for p in parents]
    return StackView(
        "stack (" + " + ".join(p.method for p in parents) + ")",
        Capabilities(
            mergeable=False,
            stackable=all(c.stackable for c in caps),
            mixed_batch=all(c.mixed_batch for c in caps),
            needs_quantized_base=any(c.needs_quantized_base for c in caps),
            merge_note="a recipe is a stack of adapters; merge its parents with peftlab compose instead",
        ),
    )


class ChatEngine:
    """Holds one base model (reloaded only when another base is asked for) and its loaded adapters."""

    def __init__(self) -> None:
        self.lock = threading.RLock()  # one generation or load at a time: routing state is per model. Held only
        # with ``with self.lock:`` inside one call on one thread, never across a yield (see the module docstring)
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
        self.model, self.tokenizer = load_model(
            base, method=method if special else None, method_config=files.config if special else None
        )
        self.base_key = key

    def load(self, path: str | os.PathLike, base: str | None = None) -> LoadedAdapter:
        """Load the adapter folder ``path`` (once) on ``base`` (default: the base it records)."""
        path = Path(path).expanduser()
        recipe = is_recipe(path)  # a stack of adapters: its parents are read (and hash-checked) here
        files = representative(path) if recipe else read_adapter(path)  # AdapterError / ConfigError name problems
        task = files.peft_config.get("task_type") or "CAUSAL_LM"
        if task != "CAUSAL_LM":
            raise AdapterError(f"{path} is a {task} adapter (a classifier); chat needs a CAUSAL_LM adapter")
        base = base or recorded_base(files)
        weights = path / (RECIPE_FILE if recipe else WEIGHTS_FILE)
        key = (str(path.resolve()), weights.stat().st_mtime_ns, base)
        with self.lock:
            hit = self.adapters.get(key)
            if hit is not None and self.model is not None:
                return hit
            method = stack_view(path) if recipe else files.method
            stackable = method.capabilities.stackable and all(
                a.method.capabilities.stackable for a in self.adapters.values()
            )
            self._base(base, files.method, files, fresh=not stackable)  # a non-stackable method gets a fresh base
            self._count += 1
            name = f"chat{self._count}"
            try:
                load_adapter(self.model, path, name, activate=False)
            except Exception:
                self.base_key = None  # the model may hold a half-loaded adapter: start fresh next time
                raise
            loaded = LoadedAdapter(name, path, method, base or "SmolLM2-135M-Instruct (default)", files, base)
            self.adapters[key] = loaded
            return loaded

    def nearest_tokens(self, adapter: LoadedAdapter, top_k: int = 5) -> list[list[tuple[str, float]]] | None:
        """The vocabulary tokens nearest each virtual token of ``adapter``'s soft prompt; ``None`` when the
        method has no soft prompt in the input-embedding space."""
        with self.lock:
            if not adapter.method.implements("soft_prompt"):
                return None
            adapter = self._current(adapter)
            try:
                return nearest_tokens(self.model, self.tokenizer, adapter.name, top_k=top_k)
            except MethodError:  # the method says it has none (prefixes live in attention, not in the input)
                return None

    def _current(self, adapter: LoadedAdapter) -> LoadedAdapter:
        """``adapter`` if it is still loaded in the current model, else loaded again: another session may have
        swapped the base since (a non-stackable method or another base model). Call it holding ``lock``."""
        if self.model is not None and any(a is adapter for a in self.adapters.values()):
            return adapter
        return self.load(adapter.path, adapter.requested_base)

    def stream(
        self,
        adapter: LoadedAdapter,
        message: str | Messages,
        max_new_tokens: int = 128,
        *,
        base_message: str | Messages | None = None,
        sampling: Sampling = GREEDY,
    ) -> Iterator[tuple[str, str]]:
        """Yield (base reply, adapted reply) so far, token by token. ``message`` is a text or a conversation (chat
        messages, a system prompt first if any); ``base_message`` gives the base model a conversation of its own
        (its own earlier replies), else it answers ``message`` too. ``sampling``: greedy unless told otherwise.

        The reply is generated on a thread of its own (it waits for the lock while another reply is generated);
        this generator holds no lock, so any thread may advance it or close it. Closing it early (Gradio does when
        the browser goes away) stops the generation at its next token and frees the model for the next request.
        """
        out: queue.Queue = queue.Queue()
        cancel = threading.Event()
        worker = threading.Thread(
            target=self._generate,
            args=(adapter, (message, message if base_message is None else base_message), max_new_tokens, out, cancel),
            kwargs={"sampling": sampling},
            daemon=True,
            name="peftlab-chat-reply",
        )
        worker.start()
        try:
            while True:
                item = out.get()
                if item is _END:
                    return
                if isinstance(item, _Failed):
                    raise item.error
                yield item
        finally:
            cancel.set()  # the consumer is gone (or done): the worker stops at its next token

    def _generate(
        self,
        adapter: LoadedAdapter,
        messages: tuple[str | Messages, str | Messages],
        max_new_tokens: int,
        out: queue.Queue,
        cancel: threading.Event,
        sampling: Sampling = GREEDY,
    ) -> None:
        """The worker thread of one reply: takes the lock, generates, puts (base, adapted) pairs on ``out``.
        ``messages``: (the adapted side's prompt, the base side's)."""
        adapted_msg, base_msg = messages
        try:
            with self.lock:
                if cancel.is_set():
                    return
                adapter = self._current(adapter)
                if adapter.method.capabilities.mixed_batch:  # one batched pass: row 0 adapted, row 1 base
                    self._rows(
                        [adapted_msg, base_msg],
                        [adapter.name, None],
                        max_new_tokens,
                        cancel,
                        lambda texts: out.put((texts[1], texts[0])),
                        sampling,
                    )
                    return
                adapted = [""]

                def first_pass(texts: list[str]) -> None:
                    adapted[0] = texts[0]
                    out.put(("", texts[0]))

                self._rows([adapted_msg], [adapter.name], max_new_tokens, cancel, first_pass, sampling)
                self._rows(
                    [base_msg], [None], max_new_tokens, cancel, lambda texts: out.put((texts[0], adapted[0])), sampling
                )
        except BaseException as e:  # handed to the consumer, which raises it
            out.put(_Failed(e))
        finally:
            out.put(_END)

    def _rows(
        self,
        prompts: list[str | Messages],
        rows: list[str | None],
        max_new_tokens: int,
        cancel: threading.Event,
        emit: Callable[[list[str]], None],
        sampling: Sampling = GREEDY,
    ) -> None:
        """Replies to ``prompts`` (one per row) from several adapters (``None`` = base) in one batched pass, on this
        thread; ``emit`` gets the texts so far after each token. Stops once ``cancel`` is set. Hold ``lock``."""
        generate_rows(
            self.model,
            self.tokenizer,
            prompts[0],
            rows,
            emit,
            max_new_tokens=max_new_tokens,
            cancel=cancel,
            row_prompts=prompts,
            sampling=sampling,
        )


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()
