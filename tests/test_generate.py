"""Generation: the side-by-side stream equals separate greedy replies, and closing it stops the generation."""

from __future__ import annotations

import threading

import pytest

import peftlab
from peftlab.generate import generate_text, stream_side_by_side
from peftlab.models import load_model
from peftlab.testing import randomize_adapter


def test_stream_side_by_side_matches_separate_replies_and_stops_when_closed(tiny_dir):
    model, tok = load_model(tiny_dir, dtype="float32", device="cpu")
    peftlab.add_adapter(model, "lora", {"r": 4})
    randomize_adapter(model, std=0.5, seed=3)
    last = None
    for texts in stream_side_by_side(model, tok, "Name a fruit.", ["default", None], max_new_tokens=10):
        last = texts
    alone = [generate_text(model, tok, "Name a fruit.", max_new_tokens=10, adapter=a) for a in ("default", None)]
    assert [t.strip() for t in last] == alone and alone[0] != alone[1]
    before = threading.active_count()
    stream = stream_side_by_side(model, tok, "Name a fruit.", ["default"], max_new_tokens=10_000)
    next(stream)
    stream.close()  # a consumer that goes away: the generation thread ends instead of running 10,000 steps
    assert threading.active_count() == before


# --- the decode loop: equal to transformers' generate, batched equal to one by one, for each method family ---

PROMPTS = ["Name a fruit.", "What is the capital of a country that has a long coast?", "Hi"]


def _hf_greedy(model, tok, prompt, max_new_tokens=8):
    """transformers' own greedy ``generate`` for one prompt, as token ids up to the first stop token: the
    reference the decode loop must equal."""
    import torch

    from peftlab.generate import _stop_ids, prompt_ids

    ids = torch.tensor([prompt_ids(tok, prompt)])
    stops = _stop_ids(tok)
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tok.pad_token_id,
        eos_token_id=stops,
    )[0, ids.shape[1] :].tolist()
    return next((out[:i] for i, t in enumerate(out) if t in stops), out)


@pytest.mark.parametrize(
    "method,config",
    [("lora", {"r": 4}), ("prompt_tuning", {"num_virtual_tokens": 3}), ("prefix_tuning", {"num_virtual_tokens": 3})],
)
def test_greedy_decode_equals_generate_and_batched_equals_one_by_one(tiny_dir, method, config):
    import torch

    from peftlab.generate import generate_ids

    model, tok = load_model(tiny_dir, dtype="float32", device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a livelier base: the tiny random one answers every prompt with the same token
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    peftlab.add_adapter(model, method, config)
    randomize_adapter(model, std=1.0, seed=3)
    adapted = [_hf_greedy(model, tok, p) for p in PROMPTS]
    with peftlab.active_adapters(model, None):
        base = [_hf_greedy(model, tok, p) for p in PROMPTS]
    assert adapted != base and all(adapted)  # the adapter acts
    assert [generate_ids(model, tok, [p], max_new_tokens=8)[0] for p in PROMPTS] == adapted
    assert generate_ids(model, tok, PROMPTS, max_new_tokens=8) == adapted  # one left-padded batch
    mixed = generate_ids(model, tok, PROMPTS * 2, max_new_tokens=8, rows=["default"] * 3 + [None] * 3)
    assert mixed == adapted + base  # base and adapted rows in one pass


def test_greedy_decode_stops_rows_at_their_stop_token_and_when_asked(tiny_dir):
    import threading

    import torch

    from peftlab.generate import greedy_decode, prompt_ids

    model, tok = load_model(tiny_dir, dtype="float32", device="cpu")
    seqs = [prompt_ids(tok, p) for p in PROMPTS]
    free = greedy_decode(model, seqs, pad_id=tok.pad_token_id, stops=[], max_new_tokens=8)
    assert [len(t) for t in free] == [8, 8, 8]
    stop = free[0][3]  # row 0 ends where it generates this token; the others go on unless they produce it
    ended = greedy_decode(model, seqs, pad_id=tok.pad_token_id, stops=[stop], max_new_tokens=8)
    assert ended[0] == free[0][: free[0].index(stop)]
    for row, full in zip(ended[1:], free[1:]):
        assert row == (full[: full.index(stop)] if stop in full else full)
    # row_done ends a row early; the batch stops when every row has ended
    calls = []
    short = greedy_decode(
        model,
        seqs,
        pad_id=tok.pad_token_id,
        stops=[],
        max_new_tokens=8,
        row_done=lambda i, t: len(t) >= 2,
        on_step=lambda tokens: calls.append([len(t) for t in tokens]),
    )
    assert short == [t[:2] for t in free] and calls == [[1, 1, 1], [2, 2, 2]]
    cancel = threading.Event()
    cancel.set()  # already cancelled: one token, then stop
    assert [
        len(t) for t in greedy_decode(model, seqs, pad_id=tok.pad_token_id, stops=[], max_new_tokens=8, cancel=cancel)
    ] == [1, 1, 1]
    assert torch.is_grad_enabled()


# --- evaluation: batched exact match equals row by row; rows stop once their outcome is decided ---


def _lively_lora(tiny_dir):
    import torch

    model, tok = load_model(tiny_dir, dtype="float32", device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    peftlab.add_adapter(model, "lora", {"r": 4})
    randomize_adapter(model, std=1.0, seed=3)
    return model, tok


def test_evaluate_batched_equals_row_by_row_and_reports_progress(tiny_dir, tmp_path):
    import json

    from peftlab.evaluate import evaluate
    from peftlab.generate import generate_batch

    model, tok = _lively_lora(tiny_dir)
    prompts = [f"Question {i}: name a fruit." for i in range(8)]
    own = generate_batch(model, tok, prompts, max_new_tokens=8, rows=["default"] * len(prompts))
    assert all(own)
    rows = [
        {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": own[i] if i % 2 else "Pear"}]}
        for i, p in enumerate(prompts)
    ]
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({**r, "split": "eval"}) + "\n" for r in rows) + json.dumps(rows[0]) + "\n")
    events = []
    fast = evaluate(
        model,
        tok,
        str(data),
        max_new_tokens=8,
        n_examples=3,
        generate_batch_size=16,
        progress=lambda *e: events.append(e),
    )
    slow = evaluate(model, tok, str(data), max_new_tokens=8, n_examples=8, generate_batch_size=1)
    assert fast["adapted"]["exact_match"] == slow["adapted"]["exact_match"] == 0.5  # the odd rows match
    assert fast["base"]["exact_match"] == slow["base"]["exact_match"]
    assert fast["examples"] == slow["examples"][:3]  # shown rows are generated in full
    assert [e["adapted"] for e in slow["examples"]] == own
    assert events[0] == ("eval loss", 0, 2) and events[-1] == ("exact match", 16, 16)
    assert ("exact match", 0, 16) in events
    with pytest.raises(ValueError, match="generate_batch_size"):
        evaluate(model, tok, str(data), generate_batch_size=0)


def test_exact_match_outcome_is_decided_only_when_no_continuation_can_change_it():
    from peftlab.evaluate import _decided

    ref = '{"country": "France", "capital": "Paris"}'
    assert not _decided("", ref) and not _decided(' {"country":', ref) and not _decided('{"country":  "Fr', ref)
    assert _decided('{"country": "Spain"', ref)  # diverged: more tokens cannot make it match
    assert _decided("Sure! Here", ref)
    assert _decided(ref + "<|im_end|>", ref) and _decided("Paris</s> more", ref)  # an end marker ends the answer
    assert not _decided('{"country": "Fr\ufffd', ref)  # half a character
    assert not _decided('{"country": "France", "capital": "Paris"}<|im', ref)  # maybe the start of a marker


@pytest.mark.smollm2
def test_smollm2_batched_generation_equals_one_by_one_and_transformers_generate(smollm2):
    from peftlab.generate import generate_ids

    model, tok = smollm2
    prompts = ["What is the capital of France?", "Name three colours.", "Structure: Rome is the capital of Italy."]
    one_by_one = [generate_ids(model, tok, [p], max_new_tokens=12)[0] for p in prompts]
    assert generate_ids(model, tok, prompts, max_new_tokens=12) == one_by_one
    assert one_by_one[0] == _hf_greedy(model, tok, prompts[0], max_new_tokens=12)


def test_greedy_decode_equals_generate_on_gpt2_left_padded():
    import torch

    from peftlab.generate import greedy_decode
    from peftlab.models import tiny_model

    model = tiny_model("gpt2", vocab_size=256).eval()
    seqs = [[5, 17, 99, 3, 42], [7, 8]]
    got = greedy_decode(model, seqs, pad_id=0, stops=[], max_new_tokens=6)
    for seq, row in zip(seqs, got):
        x = torch.tensor([seq])
        ref = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=6, do_sample=False)
        assert row == ref[0, len(seq) :].tolist()
