"""The Evaluate tab's work (peftlab.webui.eval_tab): several adapters next to the base, samples, export."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

pytest.importorskip("gradio")

from peftlab.evaluate import evaluate  # noqa: E402
from peftlab.io import load_adapter  # noqa: E402
from peftlab.models import load_model  # noqa: E402
from peftlab.train import TrainArgs, train  # noqa: E402
from peftlab.webui.engine import ChatEngine  # noqa: E402
from peftlab.webui.eval_tab import EvalTab, marked_reply, run_evaluation, samples_html  # noqa: E402


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_dir) -> Path:
    root = tmp_path_factory.mktemp("eval-runs")
    for name, method, lr in (("lora-run", "lora", 1e-2), ("bitfit-run", "bitfit", 1e-2)):
        train(
            TrainArgs(
                method=method,
                base_model=str(tiny_dir),
                dataset="capitals-json",
                output_dir=str(root / name),
                max_steps=2,
                batch_size=2,
                max_length=48,
                max_eval_samples=4,
                learning_rate=lr,
                device="cpu",
            )
        )
    return root


def test_marked_reply_highlights_what_differs():
    assert marked_reply("Paris", "Paris") == '<span class="eval-match">Paris</span>'
    out = marked_reply("the city of <Lyon>", "the city of Paris")
    assert out.startswith('<span class="eval-miss">') and "<mark>&lt;Lyon&gt;</mark>" in out
    assert "the city of" in out and "<mark>the" not in out


def test_several_adapters_are_scored_next_to_the_base_and_exported(two_runs, tmp_path):
    folders = [str(two_runs / "lora-run" / "adapter"), str(two_runs / "bitfit-run" / "adapter")]
    engine = ChatEngine()
    result = run_evaluation(engine, folders, "capitals-json", max_samples=4, max_new_tokens=4, n_examples=3)
    assert list(result.metrics) == ["base", "lora-run", "bitfit-run"]
    # each adapter's figures are what `peftlab eval` computes for it on its own
    model, tok = load_model(_base(two_runs), device="cpu")
    name = load_adapter(model, folders[0])
    alone = evaluate(model, tok, "capitals-json", adapter=name, max_samples=4, max_new_tokens=4, n_examples=3)
    assert result.metrics["lora-run"]["eval_loss"] == pytest.approx(alone["adapted"]["eval_loss"], abs=1e-5)
    assert result.metrics["base"]["eval_loss"] == pytest.approx(alone["base"]["eval_loss"], abs=1e-5)
    assert result.rows == alone["rows"]
    assert [e["lora-run"] for e in result.examples] == [e["adapted"] for e in alone["examples"]]
    assert [e["base"] for e in result.examples] == [e["base"] for e in alone["examples"]]
    assert all({"prompt", "reference", "base", "lora-run", "bitfit-run"} <= set(e) for e in result.examples)

    frame = result.frame()
    assert list(frame["model"]) == ["base", "lora-run", "bitfit-run"]
    page = samples_html(result.examples, list(result.metrics))
    assert page.count("<tr>") == 1 + len(result.examples) and "<th>bitfit-run</th>" in page

    js, cs = result.export(tmp_path / "out")
    data = json.loads(js.read_text())
    assert data["metrics"]["bitfit-run"] == result.metrics["bitfit-run"] and len(data["examples"]) == 3
    rows = list(csv.reader(cs.open()))
    assert rows[0] == ["model", "eval loss", "perplexity", "exact match"] and rows[1][0] == "base"
    assert rows[5][2:] == ["base", "lora-run", "bitfit-run"]


def _base(root: Path) -> str:
    meta = json.loads((root / "lora-run" / "adapter" / "peftlab.json").read_text())
    return meta["base_model"]


def test_the_tab_says_what_is_missing_instead_of_failing(two_runs):
    tab = EvalTab(two_runs)
    assert {v for _, v in tab.choices()} == {
        str(two_runs / "lora-run" / "adapter"),
        str(two_runs / "bitfit-run" / "adapter"),
    }
    table, samples, status, files = tab.on_evaluate([], "", "capitals-json", None, 4, 4, progress=None)
    assert table is None and "Pick at least one adapter" in status and files is None
    _, _, status, _ = tab.on_evaluate([], str(two_runs / "nope"), "capitals-json", None, 4, 4, progress=None)
    assert status.startswith("**Cannot evaluate:**") and "nope" in status
