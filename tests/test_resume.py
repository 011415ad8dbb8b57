"""Crash-safe training: default checkpoints, atomic writes that survive a failure, and ``--resume`` after
``kill -9`` that ends with the adapter an uninterrupted run writes."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import peftlab
import peftlab.checkpoint as pcheckpoint
import peftlab.train as ptrain
from peftlab.models import load_model
from peftlab.train import TrainArgs, checkpoints, read_progress, train

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = dict(
    dataset="capitals-json",
    batch_size=2,
    max_length=96,
    max_eval_samples=4,
    learning_rate=5e-3,
    method_config={"r": 4, "lora_dropout": 0.1},
)  # dropout: the RNG state must be restored too


def _run(tiny_dir, out, **kw):
    model, tok = load_model(tiny_dir)
    return train(TrainArgs(output_dir=str(out), **{**FAST, **kw}), model=model, tokenizer=tok)


def _max_diff(a_dir, b_dir) -> float:
    a = peftlab.read_adapter(a_dir).weights.tensors
    b = peftlab.read_adapter(b_dir).weights.tensors
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_checkpoints_are_on_by_default():
    args = TrainArgs()
    assert args.save_every == 50 and args.save_minutes == 10 and args.keep_checkpoints == 2
    with pytest.raises(peftlab.ConfigError, match="keep_checkpoints"):
        TrainArgs(keep_checkpoints=-1)


def test_the_last_k_checkpoints_are_kept_each_complete(tiny_dir, tmp_path):
    res = _run(tiny_dir, tmp_path, max_steps=6, save_every=2, keep_checkpoints=2)
    assert [p.name for p in checkpoints(tmp_path)] == ["step-000004", "step-000006"]
    assert [e["step"] for e in res.history if e["event"] == "checkpoint"] == [2, 4, 6]
    for ckpt in checkpoints(tmp_path):
        state = json.loads((ckpt / "trainer_state.json").read_text())
        assert state["data"] == {
            "micro_batches": state["step"],
            "global_batch": 2,
            "num_processes": 1,
            "order": "shuffled",  # packed rows come in the plain shuffled order
        }
        assert {"optimizer.safetensors", "rng_state.safetensors", "adapter_model.safetensors"} <= {
            p.name for p in ckpt.iterdir()
        }
    assert not list((tmp_path / "checkpoints").glob(".*"))  # no temporary folders left


def test_a_checkpoint_every_few_minutes(tiny_dir, tmp_path, monkeypatch):
    clock = iter(range(0, 10_000, 100))  # every call: 100 s later, so every step is 100 s past the last save
    monkeypatch.setattr(ptrain.time, "time", lambda: float(next(clock)))
    res = _run(tiny_dir, tmp_path, max_steps=4, save_every=0, save_minutes=1, keep_checkpoints=0)
    assert [e["step"] for e in res.history if e["event"] == "checkpoint"] == [1, 2, 3, 4]


def test_a_failed_checkpoint_write_keeps_the_previous_one_and_says_so(tiny_dir, tmp_path, monkeypatch):
    real = pcheckpoint.save_file

    def disk_full(tensors, filename, *a, **kw):
        if "step-000004" in filename:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, filename, *a, **kw)

    monkeypatch.setattr(pcheckpoint, "save_file", disk_full)
    res = _run(tiny_dir, tmp_path, max_steps=5, save_every=2, keep_checkpoints=1)
    warning = next(e for e in res.history if e.get("checkpoint_failed"))
    assert warning["checkpoint_failed"] == 4 and "No space left" in warning["message"]
    assert "step-000002 is intact" in warning["message"] and "training goes on" in warning["message"]
    assert res.steps == 5 and res.history[-1]["event"] == "done"  # training went on to the end
    assert [p.name for p in checkpoints(tmp_path)] == ["step-000005"]  # the later one replaced it normally
    assert not list((tmp_path / "checkpoints").glob(".*"))

    # when no later write succeeds, the previous checkpoint is what stays: whole, byte for byte, and resumable
    more = tmp_path / "more"
    _run(tiny_dir, more, max_steps=2, save_every=2)
    before = {p.name: p.read_bytes() for p in (more / "checkpoints" / "step-000002").iterdir()}
    monkeypatch.setattr(pcheckpoint, "save_file", lambda *a, **kw: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    _run(tiny_dir, more, max_steps=4, save_every=2, resume=True)
    assert [p.name for p in checkpoints(more)] == ["step-000002"]
    assert {p.name: p.read_bytes() for p in (more / "checkpoints" / "step-000002").iterdir()} == before
    assert any(e.get("checkpoint_failed") == 4 and "step-000002 is intact" in e["message"] for e in read_progress(more))


def test_resume_with_dropout_matches_an_uninterrupted_run(tiny_dir, tmp_path):
    full = _run(tiny_dir, tmp_path / "full", max_steps=6, save_every=3, grad_accum=2)
    part = tmp_path / "part"
    _run(tiny_dir, part, max_steps=6, save_every=3, grad_accum=2)
    import shutil

    shutil.rmtree(part / "checkpoints" / "step-000006")  # the crash came after step 3's checkpoint
    shutil.rmtree(part / "adapter")
    resumed = _run(tiny_dir, part, max_steps=6, save_every=3, grad_accum=2, resume=True)
    assert _max_diff(full.output_dir, resumed.output_dir) <= 1e-6
    assert next(e for e in resumed.history if e.get("resumed_from"))["resumed_from"] == 3


def test_a_padded_run_resumes_in_its_checkpoints_batch_order(tiny_dir, tmp_path, monkeypatch):
    """A run that cannot pack records its batch order (length-grouped or plain shuffled) in each checkpoint and
    resumes in it: a checkpoint that records none (written before the order was kept: the plain order) resumes in
    the plain order, saying so, and a grouped one in the grouped order."""
    import shutil

    from peftlab.checkpoint import STATE_FILE
    from peftlab.train import DEBUG_ROWS_ENV, GROUP_WINDOW

    monkeypatch.setenv(DEBUG_ROWS_ENV, "1")
    kw = dict(method="prompt_tuning", method_config={"num_virtual_tokens": 2}, max_steps=8, save_every=4)

    def rows(run) -> list[list[int]]:
        return [json.loads(line)["rows"] for line in (tmp_path / run / "rows-rank0.jsonl").read_text().splitlines()]

    def interrupted(run, **more):
        _run(tiny_dir, tmp_path / run, **kw, **more)
        shutil.rmtree(tmp_path / run / "checkpoints" / "step-000008")  # the crash came after step 4's checkpoint
        shutil.rmtree(tmp_path / run / "adapter")
        return tmp_path / run / "checkpoints" / "step-000004" / STATE_FILE

    _run(tiny_dir, tmp_path / "grouped", **kw)
    _run(tiny_dir, tmp_path / "plain", packing="off", **kw)
    assert rows("grouped") != rows("plain")

    state = interrupted("old", packing="off")
    meta = json.loads(state.read_text())
    assert meta["data"].pop("order") == "shuffled"
    state.write_text(json.dumps(meta))
    resumed = _run(tiny_dir, tmp_path / "old", **kw, resume=True)  # --packing auto would group
    assert rows("old")[8:] == rows("plain")[4:]
    assert any("resuming in it" in e.get("message", "") and "shuffled" in e["message"] for e in resumed.history)

    state = interrupted("new")
    assert json.loads(state.read_text())["data"]["order"] == f"grouped-{GROUP_WINDOW}"
    resumed = _run(tiny_dir, tmp_path / "new", **kw, resume=True)
    assert rows("new")[8:] == rows("grouped")[4:]
    assert _max_diff(tmp_path / "grouped" / "adapter", resumed.output_dir) <= 1e-6


def test_a_folder_another_trainer_holds_is_refused_and_left_as_it_is(tiny_dir, tmp_path):
    """Two trainers in one run folder would interleave checkpoints and progress: while one holds the folder, a
    second (a --resume) is refused before anything is written, naming the holder's pid; once it lets go, the resume
    runs."""
    from peftlab.errors import ConfigError
    from peftlab.train import _lock_run, is_training

    _run(tiny_dir, tmp_path, max_steps=2, save_every=2)
    assert is_training(tmp_path) is False  # the trainer let go when it ended
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != "train.lock"}
    lock = _lock_run(tmp_path)
    try:
        with pytest.raises(ConfigError, match=f"is being trained by another process \\(pid {os.getpid()}\\)"):
            _run(tiny_dir, tmp_path, max_steps=4, save_every=2, resume=True)
        assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != "train.lock"} == before
    finally:
        lock.close()
    res = _run(tiny_dir, tmp_path, max_steps=4, save_every=2, resume=True)
    assert res.steps == 4 and is_training(tmp_path) is False


def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(tiny_dir, tmp_path):
    _run(tiny_dir, tmp_path, max_steps=4, save_every=2)
    (tmp_path / "checkpoints" / "step-000004" / "adapter_model.safetensors").write_bytes(b"garbage")
    with open(tmp_path / "progress.jsonl", "a") as f:
        f.write('{"time": 1, "event": "st')  # kill -9 in the middle of writing an event
    res = _run(tiny_dir, tmp_path, max_steps=4, save_every=2, resume=True)
    assert any(e.get("resumed_from") == 2 for e in read_progress(tmp_path))  # the cut line does not swallow it
    assert any("step-000004 is unreadable" in e.get("message", "") for e in res.history)
    assert next(e for e in res.history if e.get("resumed_from"))["resumed_from"] == 2


def _cli(tiny_dir, out, *extra):
    argv = [
        sys.executable,
        "-m",
        "peftlab",
        "train",
        "--method",
        "lora",
        "--base",
        str(tiny_dir),
        "--dataset",
        "capitals-json",
        "--max-steps",
        "30",
        "--batch-size",
        "2",
        "--max-length",
        "96",
        "--max-eval-samples",
        "4",
        "--learning-rate",
        "5e-3",
        "--r",
        "4",
        "--lora-dropout",
        "0.1",
        "--save-every",
        "2",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--output",
        str(out),
        "--json",
        *extra,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True)


def test_sigkill_mid_run_then_resume_writes_the_uninterrupted_adapter(tiny_dir, tmp_path):
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    ref = _cli(tiny_dir, ref_dir)
    child = _cli(tiny_dir, run_dir)
    deadline = time.time() + 60
    while time.time() < deadline and child.poll() is None:
        done = [e["step"] for e in read_progress(run_dir) if e["event"] == "checkpoint"]
        if done and max(done) >= 4:
            os.kill(child.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = max(e["step"] for e in read_progress(run_dir) if e["event"] == "step")
    assert killed_at < 30 and not (run_dir / "adapter").exists()

    again = _cli(tiny_dir, run_dir, "--resume")
    assert again.wait(timeout=120) == 0, again.stderr.read().decode()[-2000:]
    assert ref.wait(timeout=120) == 0, ref.stderr.read().decode()[-2000:]
    diff = _max_diff(ref_dir / "adapter", run_dir / "adapter")
    print(f"killed after step {killed_at}; resumed adapter vs uninterrupted: max abs diff {diff:.3g}")
    assert diff <= 1e-6

    events = read_progress(run_dir)
    resumed = next(i for i, e in enumerate(events) if e.get("resumed_from"))
    start = events[resumed]["resumed_from"]
    assert 4 <= start <= killed_at and start % 2 == 0
    before = [e["step"] for e in events[:resumed] if e["event"] == "step"]
    after = [e["step"] for e in events[resumed:] if e["event"] == "step"]
    assert before == list(range(1, killed_at + 1)) and after == list(range(start + 1, 31))
    assert events[-1]["event"] == "done"
    card = json.loads((run_dir / "adapter" / "peftlab.json").read_text())["card"]
    assert [s for s, _ in card["loss_curve"]] == list(range(1, 31))  # one curve across the restart
