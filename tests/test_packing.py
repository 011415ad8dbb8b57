"""Padding-free packing and logits only where a label is: the same optimisation as padded batches, rows isolated."""

from __future__ import annotations

import json
import logging
import random
import re

import pytest
import torch

import peftlab
from peftlab import adapters as ad
from peftlab import data as pdata
from peftlab.loss import labelled_logits
from peftlab.models import load_model, tiny_model
from peftlab.plugins import methods
from peftlab.testing import check_packing
from peftlab.train import TrainArgs, read_progress, train

WORDS = "the a river mountain city old new north south capital of is and people live there many".split()


def _mixed_rows(n: int = 24, seed: int = 0) -> list[dict]:
    """Chat rows from a few tokens to ~60: prompt and reply lengths vary a lot (as real data does)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        ask = " ".join(rng.choice(WORDS) for _ in range(rng.choice([1, 3, 12, 25])))
        reply = " ".join(rng.choice(WORDS) for _ in range(rng.choice([1, 2, 8, 30])))
        rows.append({"messages": [{"role": "user", "content": ask}, {"role": "assistant", "content": reply}]})
    return rows


@pytest.fixture
def mixed(tmp_path):
    file = tmp_path / "mixed.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in _mixed_rows()))
    return str(file)


def _train(tiny_dir, out, dataset, **kw):
    model, tok = load_model(tiny_dir)
    args = dict(
        dataset=dataset,
        output_dir=str(out),
        batch_size=4,
        max_length=64,
        max_steps=3,
        learning_rate=5e-3,
        eval_fraction=0.2,
        max_eval_samples=4,
        save_every=0,
        method_config={"r": 4},
    )
    res = train(TrainArgs(**{**args, **kw}), model=model, tokenizer=tok)
    return res, [e["loss"] for e in res.history if e["event"] == "step"]


def test_packed_training_is_the_padded_optimisation(tiny_dir, tmp_path, mixed):
    """Same rows per micro-batch, packed or padded: the same loss per step (fp32, 1e-5), the same eval losses and
    the same adapter, with gradient accumulation; the default (auto) packs."""
    packed, lp = _train(tiny_dir, tmp_path / "packed", mixed, grad_accum=2)
    padded, lq = _train(tiny_dir, tmp_path / "padded", mixed, grad_accum=2, packing="off")
    start = {r: next(e for e in res.history if e["event"] == "start") for r, res in (("p", packed), ("q", padded))}
    notes = [e["message"] for e in read_progress(tmp_path / "packed") if e["event"] == "status"]
    assert any(re.match(r"training data: truncated \d+ of \d+ rows longer than max_length=64", m) for m in notes)
    assert start["p"]["packing"] is True and start["q"]["packing"] is False
    assert len(lp) == 3 and max(abs(a - b) for a, b in zip(lp, lq, strict=True)) < 1e-5, (lp, lq)
    assert abs(packed.eval_loss_after - padded.eval_loss_after) < 1e-5
    a = peftlab.read_adapter(packed.output_dir).weights.tensors
    b = peftlab.read_adapter(padded.output_dir).weights.tensors
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


def test_labelled_logits_loss_is_the_models_loss(tiny_dir):
    """The loss from logits at labelled positions only equals the model's own full-logit loss (1e-5): padded,
    packed (whose first label per row is dropped), with a LoRA on lm_head, and with a soft prompt in front."""
    model, tok = load_model(tiny_dir)
    items = pdata.encode_rows(_mixed_rows(6), tok, max_length=64)
    batch = pdata.collate(items, tok.pad_token_id)
    for setup in ("plain", "lm_head", "prompt"):
        model, _ = load_model(tiny_dir)
        if setup == "lm_head":
            ad.add_adapter(model, "lora", {"r": 4, "target_modules": ["q_proj", "lm_head"]}, "default")
        if setup == "prompt":
            ad.add_adapter(model, "prompt_tuning", {"num_virtual_tokens": 3}, "default")
        if setup != "plain":
            for p in ad.prepare_for_training(model, "default").values():
                torch.nn.init.normal_(p, std=0.05)
        with torch.no_grad():
            want = float(model(**batch).loss)
            got, n = labelled_logits(model).loss(model, batch)
            assert n == int((batch["labels"][:, 1:] != -100).sum())
            assert abs(float(got) - want) < 1e-5, (setup, float(got), want)
            if setup != "prompt":
                packed, count = labelled_logits(model).loss(model, pdata.pack(items))
                assert count == n and abs(float(packed) - want) < 1e-5, (setup, float(packed), want)


def test_labelled_logits_never_builds_the_full_logits(tiny_dir):
    """The output layer sees only the labelled positions: its output has one row per loss token."""
    model, tok = load_model(tiny_dir)
    items = pdata.encode_rows(_mixed_rows(6), tok, max_length=64)
    shapes = []
    model.get_output_embeddings().register_forward_hook(lambda m, a, out: shapes.append(tuple(out.shape)))
    loss, n = labelled_logits(model).loss(model, pdata.pack(items))
    loss.backward()
    tokens = sum(len(it["input_ids"]) for it in items)
    assert shapes == [(n, 1, model.config.vocab_size)] and n < tokens


def test_pack_restarts_positions_and_masks_row_starts():
    items = [{"input_ids": [5, 6, 7], "labels": [5, -100, 7]}, {"input_ids": [8, 9], "labels": [8, 9]}]
    b = pdata.pack(items)
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert b["labels"].tolist() == [[-100, -100, 7, -100, 9]]
    index, targets = pdata.loss_positions(b["labels"])
    assert index.tolist() == [1, 3] and targets.tolist() == [7, 9]
    with pytest.raises(ValueError, match="SEQ_CLS"):
        pdata.pack([{"input_ids": [1], "label": 0}])


def test_length_grouped_batches_hold_similar_lengths_in_a_shuffled_order():
    rng = random.Random(1)
    lengths = [rng.randint(1, 100) for _ in range(64)]
    order = list(range(64))
    grouped = pdata.length_grouped(order, lengths, batch_size=4, group=4, seed=3)
    assert sorted(grouped) == order and grouped == pdata.length_grouped(order, lengths, 4, 4, seed=3)
    firsts = []
    for i in range(0, 64, 16):  # each run of 4 batches: the sorted rows cut into batches, the batches shuffled
        ranked = sorted(order[i : i + 16], key=lambda j: -lengths[j])
        want = {tuple(ranked[k : k + 4]) for k in range(0, 16, 4)}
        got = [tuple(grouped[k : k + 4]) for k in range(i, i + 16, 4)]
        assert set(got) == want
        firsts.append([max(lengths[j] for j in b) for b in got])
    assert any(f != sorted(f, reverse=True) for f in firsts)  # not longest first: the batch order is shuffled


def test_packing_on_refuses_a_method_that_cannot_pack(tmp_path):
    with pytest.raises(
        peftlab.ConfigError, match=r"--packing on: prompt_tuning cannot train on packed rows: .*virtual"
    ):
        TrainArgs(method="prompt_tuning", packing="on", output_dir=str(tmp_path / "run"))
    data = tmp_path / "labels.jsonl"
    data.write_text('{"text": "good", "label": "pos"}\n{"text": "bad", "label": "neg"}\n')
    with pytest.raises(peftlab.ConfigError, match="classification .* cannot be packed"):
        TrainArgs(dataset=str(data), packing="on", output_dir=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_auto_falls_back_to_length_grouped_batches_with_a_note(tiny_dir, tmp_path, mixed, monkeypatch):
    """A method that cannot pack trains on padded batches grouped by length within windows of ``GROUP_WINDOW``
    batches of the shuffled order: each window holds the same rows as the plain order (``--packing off``), sorted by
    length and cut into batches, so a short run sees the same rows either way, with less padding."""
    from peftlab.train import DEBUG_ROWS_ENV, GROUP_WINDOW

    monkeypatch.setenv(DEBUG_ROWS_ENV, "1")
    kw = dict(method="prompt_tuning", method_config={"num_virtual_tokens": 2}, batch_size=2, max_steps=GROUP_WINDOW)
    res, losses = _train(tiny_dir, tmp_path / "auto", mixed, **kw)
    notes = [e["message"] for e in read_progress(tmp_path / "auto") if e["event"] == "status"]
    assert any(m.startswith("packing off: prompt_tuning cannot train on packed rows") for m in notes), notes
    assert any(m.endswith("training on length-grouped padded batches") for m in notes), notes
    assert next(e for e in res.history if e["event"] == "start")["packing"] is False
    assert len(losses) == GROUP_WINDOW and all(x > 0 for x in losses)
    _train(tiny_dir, tmp_path / "off", mixed, packing="off", **kw)

    def batches(run) -> list[list[int]]:
        lines = (tmp_path / run / "rows-rank0.jsonl").read_text().splitlines()
        return [json.loads(line)["rows"] for line in lines]

    grouped, plain = batches("auto"), batches("off")
    assert len(grouped) == len(plain) == GROUP_WINDOW
    assert sorted(j for b in grouped for j in b) == sorted(j for b in plain for j in b)  # the same rows
    _, tok = load_model(tiny_dir)
    train_rows, _ = pdata.split_rows(_mixed_rows(), 0.2, TrainArgs().seed)  # row ids index the training rows
    train_items = pdata.encode_rows(train_rows, tok, max_length=64)
    length = {j: len(train_items[j]["input_ids"]) for b in plain for j in b}
    ranked = sorted((j for b in plain for j in b), key=lambda j: -length[j])
    want = {tuple(sorted(ranked[k : k + 2])) for k in range(0, len(ranked), 2)}
    assert {tuple(sorted(b)) for b in grouped} == want  # batches of similar length
    assert grouped != plain

    def padding(bs) -> int:
        return sum(len(b) * max(length[j] for j in b) - sum(length[j] for j in b) for b in bs)

    assert padding(grouped) <= padding(plain)
    # with gradient accumulation a step's micro-batches count equally: grouping would reweigh rows, so it is off
    _train(tiny_dir, tmp_path / "accum", mixed, grad_accum=2, **{**kw, "max_steps": GROUP_WINDOW // 2})
    assert batches("accum") == plain


def test_rows_longer_than_max_length_are_truncated_with_a_count(tiny_dir, caplog):
    _, tok = load_model(tiny_dir)
    rows = _mixed_rows(24)
    with caplog.at_level(logging.WARNING, logger="peftlab.data.encode"):
        items = pdata.encode_rows(rows, tok, max_length=40)
    full = pdata.encode_rows(rows, tok, max_length=10_000)
    longer = sum(len(it["input_ids"]) > 40 for it in full)
    assert longer and all(len(it["input_ids"]) <= 40 for it in items)
    assert f"truncated {longer} of 24 rows longer than max_length=40" in caplog.text


def test_check_packing_catches_a_model_that_leaks_across_rows():
    """peftlab.testing's isolation step: a row's logits packed with neighbours equal the row alone; an attention
    that ignores the packed positions (a causal mask over the whole sequence) is caught."""
    model = tiny_model()
    assert check_packing(model) <= 1e-4
    model.set_attn_implementation("eager")
    assert model.config._attn_implementation == "eager" and check_packing(model) <= 1e-4
    with pytest.raises(AssertionError, match="packed"):
        check_packing(model, position_ids=False)


PACKABLE = sorted(h.name for h in methods() if h.capabilities.packable)


@pytest.mark.parametrize("method", PACKABLE)
def test_every_packable_method_keeps_packed_rows_apart(method):
    """For every installed method that trains packed: a row's logits (adapter active, its parameters randomised)
    are the same packed with any neighbours as alone (1e-4)."""
    torch.manual_seed(0)
    model = tiny_model()
    base = logits_of(model)
    ad.add_adapter(model, method, None, "default")
    ad.set_active(model, ["default"])
    for p in ad.prepare_for_training(model, "default").values():
        torch.nn.init.normal_(p, std=0.1)
    assert (logits_of(model) - base).abs().max() > 1e-3  # the adapter acts
    assert check_packing(model, name=method) <= 1e-4


def logits_of(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.arange(3, 20).view(1, -1)).logits


def test_classification_trains_on_length_grouped_batches(tiny_dir, tmp_path):
    data = tmp_path / "labels.jsonl"
    rows = [{"text": " ".join(["good"] * (1 + i % 7)), "label": "pos" if i % 2 else "neg"} for i in range(12)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model, tok = load_model(tiny_dir, task="SEQ_CLS", label_names=["neg", "pos"])
    res = train(
        TrainArgs(dataset=str(data), output_dir=str(tmp_path / "run"), max_steps=2, batch_size=4, save_every=0),
        model=model,
        tokenizer=tok,
    )
    notes = [e["message"] for e in res.history if e["event"] == "status"]
    assert any(m.startswith("packing off: a classification (SEQ_CLS) dataset") for m in notes), notes
    losses = [e["loss"] for e in res.history if e["event"] == "step"]
    assert len(losses) == 2 and all(0 < x < 10 for x in losses) and res.eval_loss_after is not None


def test_packed_attention_runs_each_row_on_its_own(tiny_dir, monkeypatch):
    """The packed fast path: on sdpa, each packed row's attention is computed alone (causal, no [T × T] mask), with
    the padded batch's loss (1e-5); padded calls under it still get sdpa's mask; training switches back after."""
    from peftlab.loss import PACKED_ATTENTION, restore_attention, use_packed_attention

    model, tok = load_model(tiny_dir)
    items = pdata.encode_rows(_mixed_rows(6), tok, max_length=64)
    padded = pdata.collate(items, tok.pad_token_id)
    with torch.no_grad():
        want = float(model(**padded).loss)
    assert use_packed_attention(model) and model.config._attn_implementation == PACKED_ATTENTION
    masks = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(
        torch.nn.functional,
        "scaled_dot_product_attention",
        lambda *a, **kw: masks.append(kw.get("attn_mask")) or sdpa(*a, **kw),
    )
    with torch.no_grad():
        packed, _ = labelled_logits(model).loss(model, pdata.pack(items))
        assert len(masks) == model.config.num_hidden_layers * len(items) and all(m is None for m in masks)
        masks.clear()
        again, _ = labelled_logits(model).loss(model, padded)
        assert len(masks) == model.config.num_hidden_layers and masks[0] is not None
    assert abs(float(packed) - want) < 1e-5 and abs(float(again) - want) < 1e-5
    restore_attention(model)
    assert model.config._attn_implementation == "sdpa"
