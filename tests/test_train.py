"""The shared trainer on a tiny llama: events, schedule, checkpoints and resume, clean stop."""

from __future__ import annotations

import json

import pytest
import torch

import peftlab
from peftlab.models import load_model
from peftlab.train import StopFlag, TrainArgs, lr_lambda, read_progress, train

FAST = dict(
    dataset="capitals-json", batch_size=2, max_length=96, max_eval_samples=4, learning_rate=5e-3, method_config={"r": 4}
)


def _run(tiny_dir, out, **kw):
    model, tok = load_model(tiny_dir)
    args = TrainArgs(output_dir=str(out), **{**FAST, **kw})
    return train(args, model=model, tokenizer=tok), model


def test_training_emits_progress_and_saves_a_loadable_adapter(tiny_dir, tmp_path):
    seen = []
    model, tok = load_model(tiny_dir)
    res = train(
        TrainArgs(output_dir=str(tmp_path), max_steps=4, eval_every=2, **FAST),
        model=model,
        tokenizer=tok,
        on_event=seen.append,
    )
    kinds = [e["event"] for e in seen]
    assert kinds[0] == "start" and kinds[-1] == "done"
    start = seen[0]
    assert start["trainable"] > 0 and start["total"] > start["trainable"]
    assert 0 < start["percent"] < 100
    steps = [e for e in seen if e["event"] == "step"]
    assert [e["step"] for e in steps] == [1, 2, 3, 4]
    assert all(e["tokens_per_s"] > 0 and e["eta_s"] >= 0 and e["lr"] > 0 for e in steps)
    assert [e["step"] for e in seen if e["event"] == "eval"] == [0, 2, 4]
    assert read_progress(tmp_path) == json.loads(json.dumps(seen))  # the file holds the same events
    assert res.steps == 4 and not res.stopped and res.eval_loss_after is not None
    fresh, _ = load_model(tiny_dir)
    peftlab.load_adapter(fresh, res.output_dir)
    ids = torch.arange(10, 30).view(1, -1)
    with torch.no_grad():
        assert torch.allclose(fresh(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)


def test_warmup_then_cosine_schedule():
    f = lr_lambda("cosine", warmup=2, total=10)
    assert f(0) < f(1) < f(2) == 1.0
    assert abs(f(6) - 0.5) < 1e-9 and f(10) == 0.0
    lin = lr_lambda("linear", warmup=0, total=4)
    assert [lin(s) for s in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]


def test_resume_continues_exactly_where_the_run_stopped(tiny_dir, tmp_path):
    full, full_model = _run(tiny_dir, tmp_path / "full", max_steps=4, save_every=2)
    part, _ = _run(tiny_dir, tmp_path / "part", max_steps=4, save_every=2)
    # simulate a crash after step 2: only the step-2 checkpoint survives
    import shutil

    shutil.rmtree(tmp_path / "part" / "checkpoints" / "step-000004")
    shutil.rmtree(tmp_path / "part" / "adapter")
    resumed, _ = _run(tiny_dir, tmp_path / "part", max_steps=4, save_every=2, resume=True)
    events = read_progress(tmp_path / "part")
    assert [e["step"] for e in events if e["event"] == "step"][-2:] == [3, 4]
    a = peftlab.read_adapter(full.output_dir).weights.tensors
    b = peftlab.read_adapter(resumed.output_dir).weights.tensors
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), f"{k} differs after resume"


def test_stop_finishes_the_step_and_keeps_the_adapter(tiny_dir, tmp_path):
    stop = StopFlag()
    model, tok = load_model(tiny_dir)
    res = train(
        TrainArgs(output_dir=str(tmp_path), max_steps=50, **FAST),
        model=model,
        tokenizer=tok,
        stop=stop,
        on_event=lambda e: stop.set() if e.get("step") == 2 and e["event"] == "step" else None,
    )
    assert res.stopped and res.steps == 2
    assert read_progress(tmp_path)[-1]["event"] == "stopped"
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    assert (tmp_path / "checkpoints" / "step-000002" / "optimizer.safetensors").exists()


def test_stop_file_stops_a_run(tiny_dir, tmp_path):
    def touch(e):
        if e["event"] == "step" and e["step"] == 1:
            (tmp_path / "STOP").write_text("")

    model, tok = load_model(tiny_dir)
    res = train(TrainArgs(output_dir=str(tmp_path), max_steps=50, **FAST), model=model, tokenizer=tok, on_event=touch)
    assert res.stopped and res.steps == 1


def test_gradient_accumulation_counts_optimizer_steps(tiny_dir, tmp_path):
    res, _ = _run(tiny_dir, tmp_path, max_steps=3, grad_accum=2)
    start = next(e for e in res.history if e["event"] == "start")
    assert res.steps == 3 and start["steps"] == 3


def test_bad_arguments_are_named():
    with pytest.raises(peftlab.ConfigError, match="lr_scheduler"):
        TrainArgs(lr_scheduler="sawtooth")
    with pytest.raises(peftlab.ConfigError, match="max_steps"):
        TrainArgs(max_steps=0)


def test_unknown_method_fails_before_loading_anything(tmp_path):
    with pytest.raises(peftlab.UnknownMethodError, match="installed methods"):
        train(TrainArgs(method="nope", output_dir=str(tmp_path)))


def test_trainargs_refuses_a_dataset_whose_task_the_method_cannot_train(tmp_path):
    data = tmp_path / "labels.jsonl"
    data.write_text('{"text": "good", "label": "pos"}\n{"text": "bad", "label": "neg"}\n')
    with pytest.raises(peftlab.ConfigError, match="qlora does not support SEQ_CLS datasets"):
        TrainArgs(method="qlora", dataset=str(data), output_dir=str(tmp_path / "run"))
    assert TrainArgs(method="lora", dataset=str(data), output_dir=str(tmp_path / "run")).dataset == str(data)
    assert not (tmp_path / "run").exists()


def test_training_again_into_a_finished_run_says_it_replaces_that_adapter(tiny_dir, tmp_path):
    """A second run into a folder that holds a finished run's adapter says, before it starts, that it will replace
    it (and how to keep it); a --resume of it, or a fresh folder, says nothing of the kind."""
    first, _ = _run(tiny_dir, tmp_path, max_steps=1)
    assert not [e for e in first.history if "earlier run" in e.get("message", "")]
    again, _ = _run(tiny_dir, tmp_path, max_steps=1)
    notes = [e["message"] for e in again.history if e["event"] == "status"]
    assert any("holds the adapter of an earlier run: this run replaces it" in m and "--resume" in m for m in notes)
    resumed, _ = _run(tiny_dir, tmp_path, max_steps=2, resume=True)
    assert not [e for e in resumed.history if "earlier run" in e.get("message", "")]
