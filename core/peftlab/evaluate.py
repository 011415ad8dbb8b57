"""Evaluation: eval loss and perplexity, exact match or accuracy, sample generations base vs adapted."""

from __future__ import annotations

import math
from typing import Any

import torch

from .adapters import model_task
from .data.collate import collate
from .data.encode import encode_rows
from .data.rows import label_names, prompt_and_reference, split_rows
from .data.sources import load_rows
from .generate import generate_batch
from .state import active_adapters
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
) -> dict[str, Any]:
    """Metrics of ``adapter`` (and of the base model when ``compare_base``) on the dataset's held-out rows."""
    rows = eval_rows(dataset, seed=seed, max_samples=max_samples)
    task = model_task(model)
    labels = label_names(load_rows(dataset)) if task == "SEQ_CLS" else None
    items = encode_rows(rows, tokenizer, max_length=max_length, task=task, labels=labels)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    targets = {"adapted": adapter} if adapter else {}
    if compare_base or not adapter:
        targets["base"] = None
    result: dict[str, Any] = {"dataset": dataset, "rows": len(rows), "task": task}
    for label, name in targets.items():
        with active_adapters(model, name):
            loss = eval_loss(model, items, pad, batch_size)
            result[label] = {"eval_loss": loss, "perplexity": math.exp(min(loss, 50))}
            if task == "SEQ_CLS":
                result[label]["accuracy"] = _accuracy(model, tokenizer, rows, labels, batch_size)
    if task == "CAUSAL_LM":
        pairs = [p for p in (prompt_and_reference(r) for r in rows) if p is not None]
        if pairs:
            prompts = [p for p, _ in pairs]
            refs = [r for _, r in pairs]
            replies: dict[str, list[str]] = {}
            for label, name in targets.items():
                out: list[str] = []
                for i in range(0, len(prompts), batch_size):
                    chunk = prompts[i : i + batch_size]
                    out += generate_batch(
                        model, tokenizer, chunk, max_new_tokens=max_new_tokens, rows=[name] * len(chunk)
                    )
                replies[label] = out
                result[label]["exact_match"] = sum(exact_match(o, r) for o, r in zip(out, refs)) / len(refs)
            result["examples"] = [
                {"prompt": prompts[i][-1]["content"], "reference": refs[i], **{k: v[i] for k, v in replies.items()}}
                for i in range(min(n_examples, len(prompts)))
            ]
    return result
