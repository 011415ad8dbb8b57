"""Generation: greedy replies, batched with left padding, and base-vs-adapted side by side in one pass."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence

import torch

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


class _RowStreamer:
    """A ``generate`` streamer that hands each step's tokens (one per row) to a queue."""

    def __init__(self, n_prompt: int) -> None:
        self.queue: queue.Queue = queue.Queue()
        self._skip = True  # the first put() is the prompt

    def put(self, value: torch.Tensor) -> None:
        if self._skip:
            self._skip = False
            return
        self.queue.put(value.reshape(-1).tolist())

    def end(self) -> None:
        self.queue.put(None)


def stream_side_by_side(
    model,
    tokenizer,
    prompt: str | Messages,
    rows: Sequence[str | None],
    *,
    max_new_tokens: int = 128,
    raw: bool = False,
) -> Iterator[list[str]]:
    """Stream greedy replies to one prompt from several adapters (``None`` = base) in ONE batched pass.

    Yields the list of texts so far, one per row, after every generated token.
    """
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = prompt_ids(tokenizer, prompt, raw)
    input_ids, mask = _left_pad([ids] * len(rows), pad, device)
    streamer = _RowStreamer(len(ids))
    stops = _stop_ids(tokenizer)
    error: list[BaseException] = []

    def run() -> None:
        try:
            with torch.no_grad(), mixed_batch(model, rows):
                model.generate(
                    input_ids=input_ids,
                    attention_mask=mask,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=pad,
                    eos_token_id=stops,
                    streamer=streamer,
                )
        except BaseException as e:  # surfaced to the caller below
            error.append(e)
        finally:
            streamer.end()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    tokens: list[list[int]] = [[] for _ in rows]
    finished = [False] * len(rows)
    while True:
        step = streamer.queue.get()
        if step is None:
            break
        for i, t in enumerate(step):
            if finished[i]:
                continue
            if t in stops:
                finished[i] = True
            else:
                tokens[i].append(t)
        yield [tokenizer.decode(t, skip_special_tokens=True) for t in tokens]
    thread.join()
    if error:
        raise error[0]
