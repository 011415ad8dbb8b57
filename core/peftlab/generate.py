"""Generation: greedy replies, batched with left padding, and base-vs-adapted side by side in one pass."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from .state import active_adapters, mixed_batch

Messages = list[dict[str, str]]


def prompt_ids(tokenizer, prompt: str | Messages, raw: bool = False) -> list[int]:
    """Token ids of a prompt: the chat template with the generation prompt, or the raw text."""
    if isinstance(prompt, str) and raw:
        return tokenizer(prompt, add_special_tokens=False)["input_ids"]
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    text = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages) + "Assistant:"
    return tokenizer(text)["input_ids"]


def _left_pad(seqs: Sequence[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s) :] = 1
    return ids.to(device), mask.to(device)


def _stop_ids(tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id}
    for tok in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(tok) if tok in tokenizer.get_vocab() else None
        if tid is not None:
            ids.add(tid)
    return sorted(i for i in ids if i is not None)


@torch.no_grad()
def generate_batch(
    model,
    tokenizer,
    prompts: Sequence[str | Messages],
    *,
    max_new_tokens: int = 64,
    raw: bool = False,
    rows: Sequence[str | None] | None = None,
) -> list[str]:
    """Greedy replies to several prompts in one left-padded batch.

    ``rows`` picks an adapter per prompt (``None`` = base model) in a mixed-adapter batch; without it the
    model's active adapters apply to all.
    """
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids, mask = _left_pad([prompt_ids(tokenizer, p, raw) for p in prompts], pad, device)
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad, eos_token_id=_stop_ids(tokenizer))
    if rows is not None:
        with mixed_batch(model, rows):
            out = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    else:
        out = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    return [tokenizer.decode(o[ids.shape[1] :], skip_special_tokens=True).strip() for o in out]


def generate_text(
    model,
    tokenizer,
    prompt: str | Messages,
    *,
    max_new_tokens: int = 64,
    raw: bool = False,
    adapter: str | None | bool = True,
) -> str:
    """One greedy reply. ``adapter``: True = the active adapters, None/False = the base model, or a name."""
    if adapter is True:
        return generate_batch(model, tokenizer, [prompt], max_new_tokens=max_new_tokens, raw=raw)[0]
    with active_adapters(model, adapter or None):
        return generate_batch(model, tokenizer, [prompt], max_new_tokens=max_new_tokens, raw=raw)[0]


class _TextStreamer:
    """A ``generate`` streamer: after each step (one token per row) it hands the texts so far to ``emit``; a row
    stops growing at its first stop token."""

    def __init__(self, tokenizer, n_rows: int, stops: Sequence[int], emit: Callable[[list[str]], None]) -> None:
        self.tokenizer, self.stops, self.emit = tokenizer, set(stops), emit
        self.tokens: list[list[int]] = [[] for _ in range(n_rows)]
        self.finished = [False] * n_rows
        self.prompt = True  # the first put() is the prompt

    def put(self, value: torch.Tensor) -> None:
        if self.prompt:
            self.prompt = False
            return
        for i, t in enumerate(value.reshape(-1).tolist()):
            if self.finished[i]:
                continue
            if t in self.stops:
                self.finished[i] = True
            else:
                self.tokens[i].append(t)
        self.emit([self.tokenizer.decode(t, skip_special_tokens=True) for t in self.tokens])

    def end(self) -> None:
        pass


class _Cancelled(StoppingCriteria):
    """Stops every row once ``cancel`` is set (the reply's consumer has gone away)."""

    def __init__(self, cancel: threading.Event) -> None:
        self.cancel = cancel

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.cancel.is_set(), dtype=torch.bool, device=input_ids.device)


@torch.no_grad()
def generate_rows(
    model,
    tokenizer,
    prompt: str | Messages,
    rows: Sequence[str | None],
    emit: Callable[[list[str]], None],
    *,
    max_new_tokens: int = 128,
    raw: bool = False,
    cancel: threading.Event | None = None,
) -> None:
    """Greedy replies to one prompt from several adapters (``None`` = base) in ONE batched pass, on this thread:
    ``emit`` gets the list of texts so far, one per row, after every generated token. Setting ``cancel`` stops
    every row at the next token."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = prompt_ids(tokenizer, prompt, raw)
    input_ids, mask = _left_pad([ids] * len(rows), pad, device)
    stops = _stop_ids(tokenizer)
    criteria = StoppingCriteriaList([_Cancelled(cancel)]) if cancel is not None else None
    with mixed_batch(model, rows):
        model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=stops,
            streamer=_TextStreamer(tokenizer, len(rows), stops, emit),
            stopping_criteria=criteria,
        )


def stream_side_by_side(
    model,
    tokenizer,
    prompt: str | Messages,
    rows: Sequence[str | None],
    *,
    max_new_tokens: int = 128,
    raw: bool = False,
) -> Iterator[list[str]]:
    """``generate_rows`` as an iterator: yields the list of texts so far, one per row, after every token (the
    generation runs on a thread of its own; closing the iterator stops it)."""
    texts: queue.Queue = queue.Queue()
    cancel = threading.Event()
    error: list[BaseException] = []
    done = object()

    def run() -> None:
        try:
            generate_rows(
                model, tokenizer, prompt, rows, texts.put, max_new_tokens=max_new_tokens, raw=raw, cancel=cancel
            )
        except BaseException as e:  # surfaced to the caller below
            error.append(e)
        finally:
            texts.put(done)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        while (item := texts.get()) is not done:
            yield item
    finally:
        cancel.set()
        thread.join()
    if error:
        raise error[0]
