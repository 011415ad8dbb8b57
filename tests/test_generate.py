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
    """Batched exact match, with the rows a teacher-forced pass decides not generated, gives what generating every
    row one at a time gives."""
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
    slow = evaluate(model, tok, str(data), max_new_tokens=8, n_examples=8, generate_batch_size=1, teacher_forcing=False)
    assert fast["adapted"]["exact_match"] == slow["adapted"]["exact_match"] == 0.5  # the odd rows match
    assert fast["base"]["exact_match"] == slow["base"]["exact_match"]
    assert fast["examples"] == slow["examples"][:3]  # shown rows are generated in full
    assert [e["adapted"] for e in slow["examples"]] == own
    assert events[0] == ("eval loss", 0, 2) and events[-1] == ("exact match", 16, 16)
    first = next(e for e in events if e[0] == "exact match")
    assert 0 < first[1] < 16  # rows the eval-loss pass decided count at once; the others are generated
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


def test_a_teacher_forced_pass_stands_for_greedy_decoding_only_where_it_is_sure():
    from peftlab.evaluate import _Greedy

    g = _Greedy(margin=1e-3)
    stop, ref = 9, [5, 6, 7, 9]  # the reference reply, its stop token last; the prompt is 3 tokens
    g.seen = {0: {2: (5, True), 3: (6, True), 4: (7, True), 5: (9, True)}}  # position p predicts token p + 1
    kw = dict(stops=[stop], max_new_tokens=8, decided=lambda t: True, full=False)
    assert g.reply(0, 3, ref, **kw) == [5, 6, 7]  # follows the reference to its stop: the stop is not returned
    assert g.reply(0, 3, ref, **{**kw, "max_new_tokens": 2}) == [5, 6]  # cut where generation would be
    g.seen[0][4] = (7, False)  # a near tie: rounding could pick the other token
    assert g.reply(0, 3, ref, **kw) is None
    g.seen[0][4] = (8, True)  # greedy leaves the reference at the third token
    assert g.reply(0, 3, ref, **kw) == [5, 6, 8]
    assert g.reply(0, 3, ref, **{**kw, "decided": lambda t: False}) is None  # the outcome could still change
    assert g.reply(0, 3, ref, **{**kw, "full": True}) is None  # a reply shown in full is generated
    g.seen[0][4] = (stop, True)  # greedy stops early
    assert g.reply(0, 3, ref, **kw) == [5, 6]
    assert g.reply(1, 3, ref, **kw) is None  # a row the pass did not see


def test_only_float32_models_read_exact_match_off_the_eval_loss_pass():
    """In bfloat16 two logits one rounding step apart (0.125 near 20) differ between the padded pass and the
    cached decode, so no lead is sure: every row is generated."""
    import torch

    from peftlab.evaluate import _margin
    from peftlab.models import tiny_model

    model = tiny_model()
    assert _margin(model) == 1e-3
    precision = torch.get_float32_matmul_precision()
    try:  # float32 weights whose matmuls may round to TF32 / bfloat16: no lead is sure either
        torch.set_float32_matmul_precision("high")
        assert _margin(model) is None
    finally:
        torch.set_float32_matmul_precision(precision)
    assert _margin(model) == 1e-3
    assert _margin(model.to(torch.bfloat16)) is None and _margin(model.to(torch.float16)) is None


@pytest.mark.smollm2
def test_smollm2_exact_match_from_the_eval_loss_pass_equals_generating(smollm2, tmp_path, monkeypatch):
    """SmolLM2's own greedy replies as references: the eval-loss pass decides those rows (exact match, nothing
    generated); a wrong reference is generated; the result equals generating every row."""
    import json

    import peftlab.evaluate as ev
    from peftlab.generate import generate_batch

    model, tok = smollm2
    prompts = ["What is the capital of France?", "Say hello in one word.", "What is 2 + 2?", "Name a colour."]
    own = generate_batch(model, tok, prompts, max_new_tokens=40)
    rows = [
        {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": r if i else "Lyon."}]}
        for i, (p, r) in enumerate(zip(prompts, own))
    ]
    data = tmp_path / "own.jsonl"
    data.write_text("".join(json.dumps({**r, "split": "eval"}) + "\n" for r in rows) + json.dumps(rows[0]) + "\n")
    generated = []
    decode = ev.greedy_decode
    monkeypatch.setattr(ev, "greedy_decode", lambda m, seqs, **kw: generated.extend(seqs) or decode(m, seqs, **kw))
    fast = ev.evaluate(model, tok, str(data), adapter=None, max_new_tokens=40, n_examples=0)
    assert fast["base"]["exact_match"] == 0.75 and len(generated) < len(prompts)
    slow = ev.evaluate(model, tok, str(data), adapter=None, max_new_tokens=40, n_examples=0, teacher_forcing=False)
    assert fast == slow


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
