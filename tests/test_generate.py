"""Generation: the side-by-side stream equals separate greedy replies, and closing it stops the generation."""

from __future__ import annotations

import threading

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
