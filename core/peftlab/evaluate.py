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


def _margin(model) -> float | None:
    """How far (in logits) the greedy token must lead the runner-up for a teacher-forced pass to stand for greedy
    decoding, or ``None`` when it cannot. The two compute the same logits up to rounding (a padded batch without a
    cache against a left-padded one with it): about 1e-5 in float32, so a lead of 1e-3 is sure. In 16-bit the
    rounding step of a logit of ~20 is already 0.125 (bfloat16), and quantized layers (bitsandbytes) run other
    kernels for one token than for a sequence: there every row is generated. So too where float32 matmuls may
    round to TF32 or bfloat16 (``torch.set_float32_matmul_precision`` below "highest", CUDA's ``allow_tf32``)."""
    if getattr(model, "is_quantized", False) or getattr(model, "hf_quantizer", None) is not None:
        return None
    if any(("4bit" in type(m).__name__ or "8bit" in type(m).__name__) for m in model.modules()):
        return None
    if torch.get_float32_matmul_precision() != "highest" or torch.backends.cuda.matmul.allow_tf32:
        return None  # TF32 / bf16 inside float32 matmuls: logits move by ~1e-2, no lead of 1e-3 is sure
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    return 1e-3 if dtypes <= {torch.float32, torch.float64} else None


def _forced_replies(items: list[dict], seqs: list[list[int]], stops: list[int]) -> dict[int, list[int]]:
    """Rows a teacher-forced pass can stand for: row ``i`` → its reference reply's tokens up to and including the
    first stop token, when ``items[i]`` is exactly the generation prompt ``seqs[i]`` followed by that labelled
    reply."""
    stop_set = set(stops)
    out = {}
    for i, (item, seq) in enumerate(zip(items, seqs, strict=True)):
        ids, labels = list(item["input_ids"]), item.get("labels")
        if labels is None or ids[: len(seq)] != seq:
            continue
        reply = ids[len(seq) :]
        end = next((j for j, t in enumerate(reply) if t in stop_set), None)
        if end is not None and all(int(labels[len(seq) + j]) == reply[j] for j in range(end + 1)):
            out[i] = reply[: end + 1]
    return out


class _Greedy:
    """An ``eval_loss`` observer: per item and labelled position, the argmax token and whether it leads the
    runner-up by more than ``margin`` (then greedy decoding, whose logits differ only by rounding, picks it too)."""

    def __init__(self, margin: float) -> None:
        self.margin = margin
        self.seen: dict[int, dict[int, tuple[int, bool]]] = {}

    def __call__(self, rows: list[int], logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor, length: int):
        top = logits.float().topk(2, dim=-1)
        sure = (top.values[:, 0] - top.values[:, 1] > self.margin).tolist()
        for flat, tok, ok in zip(index.tolist(), top.indices[:, 0].tolist(), sure):
            row, pos = divmod(flat, length)
            self.seen.setdefault(rows[row], {})[pos] = (tok, ok)

    def reply(
        self, i: int, start: int, reference: list[int], *, stops: list[int], max_new_tokens: int, decided, full: bool
    ) -> list[int] | None:
        """Greedy decoding's reply tokens for item ``i`` (prompt = its first ``start`` tokens), read off the
        teacher-forced pass, or None when it cannot tell; as ``greedy_decode`` returns them (no stop token). It
        follows ``reference`` while the reference token is the sure argmax; the reply is the whole reference when it
        reaches its stop token (or ``max_new_tokens``). When
        the sure argmax differs at some token, greedy decoding leaves the reference there: that reply so far is
        returned if ``decided(tokens)`` says no continuation can change its exact-match outcome (not with
        ``full``: a reply shown in full must be generated)."""
        seen = self.seen.get(i, {})
        for j, want in enumerate(reference[:max_new_tokens]):
            tok, sure = seen.get(start - 1 + j, (None, False))
            if not sure:
                return None
            if tok == want:
                continue
            if full:
                return None
            if tok in stops:  # greedy decoding ends the reply here
                return list(reference[:j])
            got = [*reference[:j], tok]
            return got if decided(got) else None
        got = list(reference[:max_new_tokens])
        return got[:-1] if got and got[-1] in stops else got  # the stop token ends the reply, it is not part of it


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
    seqs: list[list[int]] | None = None,
    known: dict[str, dict[int, list[int]]] | None = None,
) -> dict[str, list[str]]:
    """Greedy replies of every target (``label → adapter``, ``None`` = base) to every prompt, in left-padded
    batches of ``batch_size`` rows sorted by prompt length. When the adapter's method can serve a mixed batch,
    a prompt's base and adapted rows share a batch (one pass for both). Rows from ``keep`` on stop as soon as
    their exact match is decided (``_decided``): their replies are cut there, their outcome is the same.
    ``known[label][i]``: the greedy reply tokens of a row already known (a teacher-forced pass), not generated."""
    seqs = seqs if seqs is not None else [prompt_ids(tokenizer, p) for p in prompts]
    known = known or {}
    wanted = {label: name for label, name in targets.items()}
    names = [n for n in wanted.values() if n is not None]
    members = adapter_state(model).expand(names)  # a recipe's name stands for its member adapters
    together = all(entry(model, m)[0].capabilities.mixed_batch for m in members)
    groups = [list(wanted.items())] if together else [[item] for item in wanted.items()]
    normal_refs = [normalize_answer(r) for r in refs]
    replies = {label: [""] * len(prompts) for label in wanted}
    order = sorted(range(len(prompts)), key=lambda i: -len(seqs[i]))  # similar lengths share a batch
    total, done = len(prompts) * len(wanted), 0
    for label, rows in known.items():
        for i, tokens in rows.items():
            replies[label][i] = tokenizer.decode(tokens, skip_special_tokens=True).strip()
            done += 1
    if progress is not None:
        progress("exact match", done, total)
    for group in groups:
        jobs = [(label, name, i) for i in order for label, name in group if i not in known.get(label, {})]
        shown = [j for j in jobs if j[2] < keep]  # generated in full: batched apart, so others can stop early
        rest = [j for j in jobs if j[2] >= keep]
        batches = [part[k : k + batch_size] for part in (shown, rest) for k in range(0, len(part), batch_size)]
        for batch in batches:

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
    teacher_forcing: bool = True,
) -> dict[str, Any]:
    """Metrics of ``adapter`` (and of the base model when ``compare_base``) on the dataset's held-out rows.

    Exact match generates greedily in batches of ``generate_batch_size`` rows (base and adapted rows together
    where the method serves mixed batches); ``progress(stage, done, total)`` hears how far it is. With
    ``teacher_forcing``, the eval-loss pass tells which rows greedy decoding would answer with exactly the reference:
    at every reply position (its stop token included) the reference token is the argmax by a clear margin
    (``_margin``: float32 models only). Those rows are not generated: their reply is the reference's tokens, which
    greedy decoding would produce token for token. Likewise a row whose sure argmax leaves the reference where its
    outcome is decided. The others are generated as before."""
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
    pairs = [prompt_and_reference(r) for r in rows] if task == "CAUSAL_LM" else []
    forced: dict[int, list[int]] = {}  # item index → the reference reply, when a teacher-forced pass can decide it
    seqs: dict[int, list[int]] = {}
    margin = _margin(model) if teacher_forcing else None
    if margin is not None and pairs and len(items) == len(rows):  # items line up with rows (none dropped)
        with_pair = [i for i, p in enumerate(pairs) if p is not None]
        seqs = {i: prompt_ids(tokenizer, pairs[i][0]) for i in with_pair}
        got = _forced_replies([items[i] for i in with_pair], [seqs[i] for i in with_pair], _stop_ids(tokenizer))
        forced = {with_pair[k]: reply for k, reply in got.items()}
    greedy = {label: _Greedy(margin) for label in targets} if forced else {}  # what each eval-loss pass saw
    for n, (label, name) in enumerate(targets.items()):
        if progress is not None:
            progress("eval loss", n, len(targets))
        with active_adapters(model, name):
            loss = eval_loss(model, items, pad, batch_size, observe=greedy.get(label))
            result[label] = {"eval_loss": loss, "perplexity": math.exp(min(loss, 50))}
            if task == "SEQ_CLS":
                result[label]["accuracy"] = _accuracy(model, tokenizer, rows, labels, batch_size)
    if progress is not None:
        progress("eval loss", len(targets), len(targets))
    if task == "CAUSAL_LM":
        kept = [i for i, p in enumerate(pairs) if p is not None]
        if kept:
            prompts = [pairs[i][0] for i in kept]
            refs = [pairs[i][1] for i in kept]
            stops = _stop_ids(tokenizer)
            known: dict[str, dict[int, list[int]]] = {label: {} for label in greedy}
            for k, i in enumerate(kept):  # the rows a teacher-forced pass decided, by position in prompts
                if i not in forced:
                    continue
                normal = normalize_answer(refs[k])

                def decided(tokens: list[int], normal=normal) -> bool:
                    return _decided(tokenizer.decode(tokens, skip_special_tokens=True), normal)

                for label, g in greedy.items():
                    got = g.reply(
                        i,
                        len(seqs[i]),
                        forced[i],
                        stops=stops,
                        max_new_tokens=max_new_tokens,
                        decided=decided,
                        full=k < n_examples,
                    )
                    if got is not None:
                        known[label][k] = got
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
                seqs=[seqs[i] for i in kept] if seqs else None,
                known=known,
            )
            for label, out in replies.items():
                result[label]["exact_match"] = sum(exact_match(o, r) for o, r in zip(out, refs)) / len(refs)
            result["examples"] = [
                {"prompt": prompts[i][-1]["content"], "reference": refs[i], **{k: v[i] for k, v in replies.items()}}
                for i in range(min(n_examples, len(prompts)))
            ]
    return result
