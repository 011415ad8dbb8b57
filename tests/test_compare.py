"""peftlab.compare: every method on the same task, one row each (tiny model with SmolLM2's tokenizer)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

import peftlab
from peftlab.compare import FIELDS, run_comparison, to_markdown

OTHER = next(
    (m.name for m in peftlab.methods() if m.name not in ("lora", "qlora") and not m.capabilities.mergeable), None
)


def _check_row(row: dict, steps: int) -> None:
    assert "error" not in row, row.get("error")
    for key, _ in FIELDS:
        assert key in row, key
    assert row["steps"] == steps
    assert 0 < row["trainable"] < row["total"]
    assert math.isclose(row["percent"], 100 * row["trainable"] / row["total"])
    assert row["peak_memory_mb"] >= 0
    assert row["step_s"] > 0 and row["gen_tok_s"] > 0
    assert math.isfinite(row["eval_loss_before"]) and math.isfinite(row["eval_loss_after"])
    assert 0.0 <= row["exact_match"] <= 1.0
    assert row["mergeable"] is peftlab.get_method(row["method"]).capabilities.mergeable


@pytest.mark.skipif(OTHER is None, reason="needs a second, non-mergeable method plugin installed")
def test_two_methods_in_process(tiny_dir, tmp_path):
    seen = []
    rows = run_comparison(
        ["lora", OTHER, "no-such-method"],
        steps=2,
        base=str(tiny_dir),
        out_dir=tmp_path,
        max_eval_samples=4,
        max_length=64,
        on_result=seen.append,
        isolate=False,
    )
    assert [r["method"] for r in rows] == ["lora", OTHER, "no-such-method"] == [r["method"] for r in seen]
    for row in rows[:2]:
        _check_row(row, steps=2)
    assert rows[0]["mergeable"] and not rows[1]["mergeable"]
    assert rows[0]["trainable"] != rows[1]["trainable"]  # each method counted its own parameters
    assert "no-such-method" in rows[2]["error"]  # a failing method is a row, not a crash
    assert json.loads((tmp_path / "comparison.json").read_text()) == rows
    md = to_markdown(rows)
    lines = md.splitlines()
    assert lines[0].startswith("| method |")
    for name in ("lora", OTHER):
        assert sum(line.startswith(f"| {name} |") for line in lines) == 1
    assert any(line.startswith("| no-such-method | error:") for line in lines)


def test_one_method_in_its_own_process(tiny_dir, tmp_path):
    rows = run_comparison(["lora"], steps=1, base=str(tiny_dir), out_dir=tmp_path, max_eval_samples=2, max_length=64)
    _check_row(rows[0], steps=1)
    assert rows[0]["memory_kind"] == "process max RSS"
    assert (tmp_path / "lora.json").exists() and (tmp_path / "comparison.md").read_text().count("| lora |") == 1


def test_cli_compare_prints_the_table_and_writes_json(tiny_dir, tmp_path, capsys):
    from peftlab.cli import main

    code = main(
        [
            "compare",
            "--methods",
            "lora,no-such-method",
            "--steps",
            "1",
            "--base",
            str(tiny_dir),
            "--out-dir",
            str(tmp_path),
            "--max-eval-samples",
            "2",
            "--max-length",
            "64",
            "--json",
        ]
    )
    out = capsys.readouterr()
    assert code == 0
    rows = json.loads(out.out)
    assert [r["method"] for r in rows] == ["lora", "no-such-method"]
    _check_row(rows[0], steps=1)
    assert "unknown method 'no-such-method'" in rows[1]["error"]
    assert "[compare] lora: done" in out.err
    assert json.loads((tmp_path / "comparison.json").read_text()) == rows
    assert (tmp_path / "comparison.md").read_text().startswith("| method |")


# --- a comparison in the background: its slot, its owner, a stop that races its end ----------------------------------

ALICE, BOB = "a" * 32, "b" * 32  # browser owner ids of the form the web app issues


def fake_comparison(runs_dir, owner: str | None):
    """A comparison folder whose process (its own session, "peftlab.compare" on its command line) just sleeps."""
    import subprocess
    import sys

    folder = runs_dir / "compare-20250101-000000"
    folder.mkdir(parents=True)
    code = "import time; time.sleep(120)"
    proc = subprocess.Popen([sys.executable, "-c", code, "peftlab.compare"], start_new_session=True)
    cmdline = Path(f"/proc/{proc.pid}/cmdline")
    while b"peftlab.compare" not in cmdline.read_bytes():  # until the child has started its own program
        time.sleep(0.01)
    job = {"pid": proc.pid, "methods": ["lora"], "dataset": "capitals-json", "steps": 2, "owner": owner}
    (folder / "compare-job.json").write_text(json.dumps(job))
    return folder, proc


def test_a_comparison_holds_a_slot_and_only_its_owner_stops_it(tmp_path, monkeypatch):
    from peftlab import compare, jobs

    monkeypatch.delenv("PEFTLAB_SHARE_JOBS", raising=False)
    monkeypatch.setenv("PEFTLAB_MAX_JOBS", "1")
    folder, proc = fake_comparison(tmp_path, ALICE)
    try:
        assert compare.running_comparisons(tmp_path) == 1
        with pytest.raises(jobs.JobError, match="every slot is busy"):
            compare.start_background(tmp_path, ["lora"], steps=2)
        assert [p.name for p in tmp_path.glob("compare-*")] == [folder.name]  # nothing else started
        settings = {"dataset": "capitals-json", "device": "cpu", "max_steps": 2}
        job = jobs.start_job(tmp_path, "lora", settings, queue=True)
        assert job.status == jobs.QUEUED  # a training job waits for the comparison's slot too
        jobs.stop(job)

        assert compare.latest_background(tmp_path, BOB) is None
        with pytest.raises(jobs.JobError, match="belongs to another session"):
            compare.stop_background(folder, owner=BOB)
        assert proc.poll() is None
        compare.stop_background(folder, owner=ALICE)
        assert proc.wait(timeout=30) is not None and compare.running_comparisons(tmp_path) == 0
    finally:
        proc.kill()
        proc.wait()


def test_stopping_a_comparison_that_ends_meanwhile_raises_nothing(tmp_path, monkeypatch):
    """The process looked alive to every look but was gone by the final SIGKILL: no ProcessLookupError."""
    import os
    from types import SimpleNamespace

    from peftlab import compare

    folder = tmp_path / "compare-20250101-000000"
    folder.mkdir()
    (folder / "compare-job.json").write_text(json.dumps({"pid": 999_999_999, "methods": [], "owner": None}))
    clock = iter(range(0, 10**9, 100))
    monkeypatch.setattr(compare, "_alive", lambda pid: True)
    monkeypatch.setattr(compare, "time", SimpleNamespace(time=lambda: next(clock), sleep=lambda s: None))

    def gone(pid, sig):
        raise ProcessLookupError(3, "No such process")

    monkeypatch.setattr(os, "killpg", gone)
    compare.stop_background(folder)
