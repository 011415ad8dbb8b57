"""Generation: greedy replies, batched with left padding, and base-vs-adapted side by side in one pass."""

from __future__ import annotations

import inspect
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from .state import active_adapters, mixed_batch

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Sampling:
    """How the next token is picked: ``temperature`` 0 is greedy (argmax); above 0 tokens are drawn from the
    softmax of logits / temperature, restricted to the smallest set whose probability reaches ``top_p`` (nucleus
    sampling). ``seed`` makes a draw repeatable (None: torch's global generator)."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.temperature >= 0:  # NaN too
            raise ValueError(f"temperature must be 0 (greedy) or more, not {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], not {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def generator(self, device) -> torch.Generator | None:
        return None if self.seed is None else torch.Generator(device=device).manual_seed(self.seed)

    def pick(self, logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One token per row of ``logits`` ``[rows, vocab]``."""
        if self.greedy:
            return logits.argmax(-1)
        probs = torch.softmax(logits.float() / self.temperature, dim=-1)
        if self.top_p < 1:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            keep = sorted_p.cumsum(-1) - sorted_p < self.top_p  # the top token always stays
            sorted_p = sorted_p * keep
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


GREEDY = Sampling()


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


def _cache_param(model) -> str:
    """The name under which ``model.forward`` takes the KV cache: ``cache`` from transformers 5.24,
    ``past_key_values`` before."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _output_cache(out):
    for name in ("cache", "past_key_values"):
        cache = out.get(name) if hasattr(out, "get") else getattr(out, name, None)
        if cache is not None:
            return cache
    return None


@torch.no_grad()
def greedy_decode(
    model,
    seqs: Sequence[list[int]],
    *,
    pad_id: int,
    stops: Sequence[int],
    max_new_tokens: int,
    on_step: Callable[[list[list[int]]], None] | None = None,
    cancel: threading.Event | None = None,
    row_done: Callable[[int, list[int]], bool] | None = None,
    sampling: Sampling = GREEDY,
) -> list[list[int]]:
    """Greedy continuations of several prompts (token ids) in one left-padded batch, by a plain decode loop:
    one forward per token with the KV cache, the logits of the last position only, ``argmax``; no sampling
    machinery. A row ends at its first stop token (not returned); the loop ends when every row has ended,
    after ``max_new_tokens``, or at the next token once ``cancel`` is set. ``on_step`` gets every row's tokens
    after each step; ``row_done(i, tokens)`` may end row ``i`` early (the caller needs no more of it). Rows
    route to adapters as the model's ``AdapterState`` says (``mixed_batch``); a method's hooks see the same
    ``attention_mask``, ``position_ids`` and cache a ``generate`` call would pass."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be 0 or more, not {max_new_tokens}")
    device = next(model.parameters()).device
    ids, mask = _left_pad(seqs, pad_id, device)
    params = inspect.signature(model.forward).parameters
    cache_name = _cache_param(model)
    stop_set = set(stops)
    n = len(seqs)
    tokens: list[list[int]] = [[] for _ in range(n)]
    live = [True] * n
    kwargs: dict = {"input_ids": ids, "attention_mask": mask, "use_cache": True}
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: each row counts from its first real token
    with_positions = "position_ids" in params
    if with_positions:
        kwargs["position_ids"] = positions
    if "logits_to_keep" in params:
        kwargs["logits_to_keep"] = 1  # the LM head on the last position only (49,152 logits, not L × that)
    generator = None if sampling.greedy else sampling.generator(device)
    for _ in range(max_new_tokens):
        out = model(**kwargs)
        nxt = out.logits[:, -1].argmax(-1) if sampling.greedy else sampling.pick(out.logits[:, -1], generator)
        for i, t in enumerate(nxt.tolist()):
            if not live[i]:
                continue
            if t in stop_set:
                live[i] = False
            else:
                tokens[i].append(t)
                if row_done is not None and row_done(i, tokens[i]):
                    live[i] = False
        if on_step is not None:
            on_step(tokens)
        if not any(live) or (cancel is not None and cancel.is_set()):
            break
        cache = _output_cache(out)
        mask = torch.cat([mask, mask.new_ones((n, 1))], dim=1)
        positions = positions[:, -1:] + 1
        kwargs = {"input_ids": nxt[:, None], "attention_mask": mask, "use_cache": True, cache_name: cache}
        if with_positions:
            kwargs["position_ids"] = positions
    return tokens


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def generate_ids(
    model,
    tokenizer,
    prompts: Sequence[str | Messages],
    *,
    max_new_tokens: int = 64,
    raw: bool = False,
    rows: Sequence[str | None] | None = None,
    row_done: Callable[[int, list[int]], bool] | None = None,
) -> list[list[int]]:
    """``generate_batch``'s token ids (without the stop token)."""
    seqs = [prompt_ids(tokenizer, p, raw) for p in prompts]
    kw = dict(pad_id=_pad_id(tokenizer), stops=_stop_ids(tokenizer), max_new_tokens=max_new_tokens, row_done=row_done)
    if rows is None:
        return greedy_decode(model, seqs, **kw)
    with mixed_batch(model, rows):
        return greedy_decode(model, seqs, **kw)


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
    out = generate_ids(model, tokenizer, prompts, max_new_tokens=max_new_tokens, raw=raw, rows=rows)
    return [tokenizer.decode(t, skip_special_tokens=True).strip() for t in out]


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
    row_prompts: Sequence[str | Messages] | None = None,
    sampling: Sampling = GREEDY,
) -> None:
    """Replies to one prompt from several adapters (``None`` = base) in ONE batched pass, on this thread: ``emit``
    gets the list of texts so far, one per row, after every generated token. Setting ``cancel`` stops every row at
    the next token. ``row_prompts`` gives each row a prompt of its own instead (e.g. each side of a conversation
    its own history); ``sampling`` picks tokens (greedy by default)."""
    if row_prompts is not None and len(row_prompts) != len(rows):
        raise ValueError(f"{len(row_prompts)} row prompts for {len(rows)} rows")
    seqs = [prompt_ids(tokenizer, p, raw) for p in (row_prompts if row_prompts is not None else [prompt])]
    seqs = seqs if row_prompts is not None else seqs * len(rows)

    def on_step(tokens: list[list[int]]) -> None:
        emit([tokenizer.decode(t, skip_special_tokens=True) for t in tokens])

    with mixed_batch(model, rows):
        greedy_decode(
            model,
            seqs,
            pad_id=_pad_id(tokenizer),
            stops=_stop_ids(tokenizer),
            max_new_tokens=max_new_tokens,
            on_step=on_step,
            cancel=cancel,
            sampling=sampling,
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
