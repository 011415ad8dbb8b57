"""Evaluation: eval loss and perplexity, exact match or accuracy, sample generations base vs adapted."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from .adapters import entry, model_task
from .data.collate import collate
from .data.encode import encode_rows
from .data.rows import label_names, prompt_and_reference, split_rows
from .data.sources import load_rows
from .generate import _pad_id, _stop_ids, greedy_decode, prompt_ids
from .state import active_adapters, adapter_state, mixed_batch
from .train import eval_loss

# End-of-turn / end-of-text markers of common chat templates, stripped by normalize_answer.
END_OF_TURN_MARKERS = (
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|end|>",
    "<end_of_turn>",
    "</s>",
    "<|end_of_text|>",
)


def normalize_answer(text: str) -> str:
    """Cut at the first end-of-turn marker (e.g. ``<|im_end|>``), strip and collapse whitespace."""
    cut = len(text)
    for marker in END_OF_TURN_MARKERS:
        pos = text.find(marker)
        if pos != -1:
            cut = min(cut, pos)
    return " ".join(text[:cut].split())


def exact_match(prediction: str, reference: str) -> bool:
    """Case-sensitive equality after :func:`normalize_answer`."""
    return normalize_answer(prediction) == normalize_answer(reference)


def _decided(text: str, reference: str) -> bool:
    """Whether every continuation of the reply ``text`` has the same exact-match outcome against the normalized
    ``reference``: an end-of-turn marker ended the answer, or the normalized text no longer starts the reference
    (generating more could only lengthen it). A split character or the start of a marker at the end is undecided."""
    if any(marker in text for marker in END_OF_TURN_MARKERS):
        return True
    if text.endswith("\ufffd"):  # a character whose bytes span tokens
        return False
    if any(marker.startswith(text[-i:]) for marker in END_OF_TURN_MARKERS for i in range(1, len(marker))):
        return False  # the start of a marker: the answer may end right here
    return not reference.startswith(" ".join(text.split()))


def eval_rows(dataset: str, eval_fraction: float = 0.1, seed: int = 0, max_samples: int = 64) -> list[dict]:
    rows = load_rows(dataset)
    return split_rows(rows, eval_fraction, seed)[1][:max_samples]


@torch.no_grad()
def _accuracy(model, tokenizer, rows: list[dict], labels: list[str], batch_size: int) -> float:
    items = encode_rows(rows, tokenizer, task="SEQ_CLS", labels=labels)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id or 0
    correct = 0
    for i in range(0, len(items), batch_size):
        batch = {k: v.to(device) for k, v in collate(items[i : i + batch_size], pad).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        correct += int((logits.argmax(-1) == batch["labels"]).sum())
    return correct / max(len(items), 1)


def _exact_match_replies(
    model,
    tokenizer,
    prompts: list,
    refs: list[str],
    targets: dict[str, str | None],
    *,
    max_new_tokens: int,
    batch_size: int,
    keep: int,
    progress: Callable[[str, int, int], None] | None,
) -> dict[str, list[str]]:
    """Greedy replies of every target (``label → adapter``, ``None`` = base) to every prompt, in left-padded
    batches of ``batch_size`` rows sorted by prompt length. When the adapter's method can serve a mixed batch,
    a prompt's base and adapted rows share a batch (one pass for both). Rows from ``keep`` on stop as soon as
    their exact match is decided (``_decided``): their replies are cut there, their outcome is the same."""
    seqs = [prompt_ids(tokenizer, p) for p in prompts]
    wanted = {label: name for label, name in targets.items()}
    names = [n for n in wanted.values() if n is not None]
    members = adapter_state(model).expand(names)  # a recipe's name stands for its member adapters
    together = all(entry(model, m)[0].capabilities.mixed_batch for m in members)
    groups = [list(wanted.items())] if together else [[item] for item in wanted.items()]
    normal_refs = [normalize_answer(r) for r in refs]
    replies = {label: [""] * len(prompts) for label in wanted}
    order = sorted(range(len(prompts)), key=lambda i: -len(seqs[i]))  # similar lengths share a batch
    total, done = len(prompts) * len(wanted), 0
    if progress is not None:
        progress("exact match", 0, total)
    for group in groups:
        jobs = [(label, name, i) for i in order for label, name in group]
        for start in range(0, len(jobs), batch_size):
            batch = jobs[start : start + batch_size]

            def row_done(j: int, tokens: list[int], batch=batch) -> bool:
                i = batch[j][2]
                text = tokenizer.decode(tokens, skip_special_tokens=True)
                return i >= keep and _decided(text, normal_refs[i])

            with mixed_batch(model, [name for _, name, _ in batch]):
                out = greedy_decode(
                    model,
                    [seqs[i] for _, _, i in batch],
                    pad_id=_pad_id(tokenizer),
                    stops=_stop_ids(tokenizer),
                    max_new_tokens=max_new_tokens,
                    row_done=row_done,
                )
            for (label, _, i), tokens in zip(batch, out):
                replies[label][i] = tokenizer.decode(tokens, skip_special_tokens=True).strip()
            done += len(batch)
            if progress is not None:
                progress("exact match", done, total)
    return replies


def evaluate(
    model,
    tokenizer,
    dataset: str,
    *,
    adapter: str | None = "default",
    compare_base: bool = True,
    max_samples: int = 64,
    max_new_tokens: int = 48,
    batch_size: int = 8,
    max_length: int = 256,
    n_examples: int = 5,
    seed: int = 0,
    generate_batch_size: int = 16,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Metrics of ``adapter`` (and of the base model when ``compare_base``) on the dataset's held-out rows.

    Exact match generates greedily in batches of ``generate_batch_size`` rows (base and adapted rows together
    where the method serves mixed batches); ``progress(stage, done, total)`` hears how far it is."""
    if generate_batch_size < 1:
        raise ValueError(f"generate_batch_size must be at least 1, got {generate_batch_size}")
    rows = eval_rows(dataset, seed=seed, max_samples=max_samples)
    task = model_task(model)
    labels = label_names(load_rows(dataset)) if task == "SEQ_CLS" else None
    items = encode_rows(rows, tokenizer, max_length=max_length, task=task, labels=labels)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    targets = {"adapted": adapter} if adapter else {}
    if compare_base or not adapter:
        targets["base"] = None
    result: dict[str, Any] = {"dataset": dataset, "rows": len(rows), "task": task}
    for n, (label, name) in enumerate(targets.items()):
        if progress is not None:
            progress("eval loss", n, len(targets))
        with active_adapters(model, name):
            loss = eval_loss(model, items, pad, batch_size)
            result[label] = {"eval_loss": loss, "perplexity": math.exp(min(loss, 50))}
            if task == "SEQ_CLS":
                result[label]["accuracy"] = _accuracy(model, tokenizer, rows, labels, batch_size)
    if progress is not None:
        progress("eval loss", len(targets), len(targets))
    if task == "CAUSAL_LM":
        pairs = [p for p in (prompt_and_reference(r) for r in rows) if p is not None]
        if pairs:
            prompts = [p for p, _ in pairs]
            refs = [r for _, r in pairs]
            replies = _exact_match_replies(
                model,
                tokenizer,
                prompts,
                refs,
                targets,
                max_new_tokens=max_new_tokens,
                batch_size=generate_batch_size,
                keep=n_examples,
                progress=progress,
            )
            for label, out in replies.items():
                result[label]["exact_match"] = sum(exact_match(o, r) for o, r in zip(out, refs)) / len(refs)
            result["examples"] = [
                {"prompt": prompts[i][-1]["content"], "reference": refs[i], **{k: v[i] for k, v in replies.items()}}
                for i in range(min(n_examples, len(prompts)))
            ]
    return result
