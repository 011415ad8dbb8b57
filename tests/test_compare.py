"""peftlab.compare: every method on the same task, one row each (tiny model with SmolLM2's tokenizer)."""

from __future__ import annotations

import json
import math

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
