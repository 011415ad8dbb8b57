"""Past runs (peftlab.runs) and the Runs tab's handlers: listing, curves, owners, delete."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from peftlab import jobs, runs
from peftlab.train import TrainArgs, train


def _train(run: Path, tiny_dir: Path, steps: int, lr: float) -> Path:
    train(
        TrainArgs(
            method="lora",
            base_model=str(tiny_dir),
            dataset="capitals-json",
            output_dir=str(run),
            max_steps=steps,
            batch_size=2,
            max_length=48,
            max_eval_samples=4,
            learning_rate=lr,
            device="cpu",
        )
    )
    return run


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_dir) -> Path:
    """A runs folder with two finished CLI-style runs (no job.json): ``first`` (3 steps), then ``second`` (2)."""
    root = tmp_path_factory.mktemp("runs")
    _train(root / "first", tiny_dir, 3, 1e-2)
    time.sleep(0.05)
    _train(root / "second", tiny_dir, 2, 5e-3)
    return root


def test_runs_are_listed_newest_first_with_their_facts(trained):
    infos = runs.list_runs(trained)
    assert [i.name for i in infos] == ["second", "first"]
    first = infos[1]
    assert (first.method, first.dataset, first.status, first.steps, first.max_steps) == (
        "lora",
        "capitals-json",
        "done",
        3,
        3,
    )
    events = [json.loads(line) for line in (trained / "first" / "progress.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in events if e["event"] == "step"]
    assert [loss for _, loss in first.curve] == losses  # the curve is the trainer's own events
    assert first.eval_loss is not None and first.eval_loss_before is not None
    assert first.adapter == trained / "first" / "adapter"
    row = first.row()
    assert row[:4] == ["first", "lora", "capitals-json", "3/3"] and row[-1] == "yes" and "→" in row[5]


def test_a_run_of_another_session_is_hidden_and_cannot_be_deleted(trained, tmp_path, monkeypatch):
    monkeypatch.delenv("PEFTLAB_SHARE_JOBS", raising=False)
    root = tmp_path / "runs"
    root.mkdir()
    other = root / "theirs"
    other.mkdir()
    (other / "progress.jsonl").write_text((trained / "first" / "progress.jsonl").read_text())
    jobs.Job(other, 0, [], "lora", status="done", owner="bob").save()
    assert [i.name for i in runs.list_runs(root, "alice")] == []
    assert [i.name for i in runs.list_runs(root, "bob")] == ["theirs"]
    with pytest.raises(runs.RunError, match="no run named 'theirs'"):
        runs.delete_run(root, "theirs", "alice")
    assert other.is_dir()
    monkeypatch.setenv("PEFTLAB_SHARE_JOBS", "1")
    assert [i.name for i in runs.list_runs(root, "alice")] == ["theirs"]


def test_a_running_job_is_not_deleted(trained, tmp_path):
    root = tmp_path / "runs"
    run = root / "live"
    run.mkdir(parents=True)
    (run / "progress.jsonl").write_text((trained / "first" / "progress.jsonl").read_text())
    # a live process whose command line names the run folder, as a trainer's does
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", str(run)])
    try:
        jobs.Job(run, proc.pid, [], "lora", status=jobs.RUNNING, owner="alice").save()
        with pytest.raises(runs.RunError, match="is running: stop it before deleting"):
            runs.delete_run(root, "live", "alice")
        assert (run / "progress.jsonl").exists()
    finally:
        proc.kill()
        proc.wait()


def test_runs_tab_overlays_curves_and_deletes_after_confirmation(trained, tmp_path):
    pytest.importorskip("gradio")
    import shutil

    from peftlab.webui.runs_tab import RunsTab

    root = tmp_path / "runs"
    shutil.copytree(trained, root)
    tab = RunsTab(root)
    table, ticked, plot, chosen, empty = tab.on_refresh(None, None, "alice")
    assert list(table["run"]) == ["second", "first"] and empty == ""
    assert ticked.value == ["second", "first"] and chosen.value == "second"
    drawn = plot.data  # the chart's data: one row per (run, step)
    assert set(drawn["run"]) == {"first", "second"}
    assert len(drawn[drawn["run"] == "first"]) == 3 and len(drawn[drawn["run"] == "second"]) == 2
    assert plot.to_dict()["encoding"]["color"]["scale"]["domain"] == ["second", "first"]  # every run has a colour
    assert set(tab.on_overlay(["first"], "alice").data["run"]) == {"first"}
    assert "3 step(s)" in tab.on_details("first", "alice")

    adapter, _, tabs, msg = tab.on_chat("first", "alice")
    assert adapter.value == str(root / "first" / "adapter") and tabs.selected == "chat" and msg == ""

    msg, sure = tab.on_delete("first", False, "alice")
    assert "I am sure" in msg and (root / "first").is_dir()
    msg, sure = tab.on_delete("first", True, "alice")
    assert msg == "Deleted run **first**." and sure is False
    assert not (root / "first").exists() and not list(root.glob(".first*"))
    assert [i.name for i in runs.list_runs(root)] == ["second"]
    table, *_, empty = tab.on_refresh(["first"], "first", "alice")
    assert list(table["run"]) == ["second"]


def test_runs_tab_push_opens_the_hub_tab_with_the_run(trained, tmp_path):
    pytest.importorskip("gradio")
    pytest.importorskip("peftlab_hub")
    from peftlab.webui import build_app

    demo = build_app(tmp_path / "app-runs")
    assert demo.peftlab_runs.widgets["push"].visible  # the Hub tab is there: the button too
    adapter, tabs, msg = demo.peftlab_runs.__class__(trained).on_push("first", "alice")
    assert adapter.value == str(trained / "first" / "adapter") and tabs.selected == "hub" and msg == ""
    _, _, msg = demo.peftlab_runs.__class__(trained).on_push("nope", "alice")
    assert "no saved adapter" in msg


def test_a_cli_run_still_writing_its_progress_is_running_and_not_deleted(trained, tmp_path):
    """A CLI run has no job.json: without a final event and with progress written lately it is running (it cannot
    be deleted); once its progress is older than ``CLI_ACTIVE_S`` it was interrupted, and can be."""
    import os

    root = tmp_path / "runs"
    run = root / "cli"
    run.mkdir(parents=True)
    lines = (trained / "first" / "progress.jsonl").read_text().splitlines()
    live = [ln for ln in lines if json.loads(ln)["event"] not in ("done", "stopped", "error")]
    (run / "progress.jsonl").write_text("\n".join(live) + "\n")
    assert runs.run_info(run).status == "running"
    with pytest.raises(runs.RunError, match="is running: stop it before deleting"):
        runs.delete_run(root, "cli")
    assert run.is_dir()
    old = time.time() - runs.CLI_ACTIVE_S - 60
    os.utime(run / "progress.jsonl", (old, old))
    assert runs.run_info(run).status == "interrupted"
    runs.delete_run(root, "cli")
    assert not run.exists()


def test_a_run_its_trainer_holds_is_running_whatever_its_age_and_a_free_one_is_not(trained, tmp_path):
    """A trainer holds its run folder's lock file while it trains: held, the run is running (not deleted) even with
    old progress or an earlier final event (a --resume); free, a run without a final event was interrupted at once,
    however recent its progress."""
    import os

    from peftlab.train import LOCK_FILE, _lock_run, is_training

    root = tmp_path / "runs"
    run = root / "cli"
    run.mkdir(parents=True)
    lines = (trained / "first" / "progress.jsonl").read_text().splitlines()
    (run / "progress.jsonl").write_text("\n".join(lines) + "\n")  # ended "done": resumed below
    assert is_training(run) is None  # no lock file: a run from before trainers locked their folder
    lock = _lock_run(run)  # a trainer (another process's lock, as far as the folder is concerned)
    try:
        old = time.time() - runs.CLI_ACTIVE_S - 60
        os.utime(run / "progress.jsonl", (old, old))
        assert is_training(run) is True and runs.run_info(run).status == "running"
        with pytest.raises(runs.RunError, match="is running: stop it before deleting"):
            runs.delete_run(root, "cli")
        assert run.is_dir() and (run / LOCK_FILE).read_text() == str(os.getpid())
    finally:
        lock.close()
    live = [ln for ln in lines if json.loads(ln)["event"] not in ("done", "stopped", "error")]
    (run / "progress.jsonl").write_text("\n".join(live) + "\n")  # fresh, no final event, the lock free
    assert is_training(run) is False and runs.run_info(run).status == "interrupted"
    runs.delete_run(root, "cli")
    assert not run.exists()


def test_a_half_deleted_run_does_not_come_back(trained, tmp_path):
    """A delete that crashed leaves ``.<name>.deleting``: no listing shows it."""
    import shutil

    root = tmp_path / "runs"
    shutil.copytree(trained / "first", root / ".first.deleting")
    assert runs.list_runs(root) == []
