"""The Evaluate tab: one or more adapters (runs, the local store, Hub ids, folders) on a dataset's held-out rows.

A table of eval loss, perplexity and exact match for the base model and each adapter (``peftlab.evaluate`` — what
``peftlab eval`` prints), sample rows with the expected answer and every reply side by side (an exact match in
green, the words that differ from the expected answer marked), and the whole result as JSON and CSV to download.

The tab keeps a model of its own (a ``ChatEngine``), so a long evaluation never holds up the Chat tab."""

from __future__ import annotations

import csv
import difflib
import html
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from ..data.sources import builtin_datasets
from ..errors import PeftlabError
from ..evaluate import evaluate, exact_match
from .adapters import HAS_HUB, adapter_choices, adapter_label, open_adapter, viewer
from .chat_tab import visitor_token
from .engine import ChatEngine

HELP = (
    "Pick one or more adapters and a dataset: each is scored on the dataset's held-out rows next to the base model "
    "(eval loss, perplexity, exact match of greedy replies), and sample rows show every reply side by side."
)
METRIC_COLUMNS = ["model", "eval loss", "perplexity", "exact match"]


def marked_reply(reply: str, reference: str) -> str:
    """``reply`` as HTML: green when it matches ``reference`` exactly (peftlab's exact match), else the words that
    are not in ``reference`` wrapped in ``<mark>``."""
    if exact_match(reply, reference):
        return f'<span class="eval-match">{html.escape(reply)}</span>'
    ours, theirs = reply.split(), reference.split()
    out = []
    for op, i1, i2, _, _ in difflib.SequenceMatcher(a=ours, b=theirs, autojunk=False).get_opcodes():
        words = html.escape(" ".join(ours[i1:i2]))
        if not words:
            continue
        out.append(words if op == "equal" else f"<mark>{words}</mark>")
    return '<span class="eval-miss">' + (" ".join(out) or "<em>(empty)</em>") + "</span>"


def samples_html(examples: list[dict], models: list[str]) -> str:
    """The sample rows as an HTML table: prompt, expected answer, then one column per model."""
    if not examples:
        return ""
    head = "".join(f"<th>{html.escape(m)}</th>" for m in ["prompt", "expected", *models])
    rows = []
    for ex in examples:
        cells = [html.escape(ex["prompt"]), html.escape(ex["reference"])]
        cells += [marked_reply(ex.get(m, ""), ex["reference"]) for m in models]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f'<table id="eval-samples-table"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


@dataclass
class Evaluation:
    """The result of one evaluation: metrics per model ("base", then each adapter's label) and sample rows."""

    dataset: str
    rows: int = 0
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    examples: list[dict] = field(default_factory=list)  # prompt, reference, and one reply per model

    def frame(self) -> pd.DataFrame:
        def fmt(v: Any) -> str:
            return "" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

        rows = [
            [m, fmt(v.get("eval_loss")), fmt(v.get("perplexity")), fmt(v.get("exact_match", v.get("accuracy")))]
            for m, v in self.metrics.items()
        ]
        return pd.DataFrame(rows, columns=METRIC_COLUMNS)

    def export(self, folder: Path) -> list[Path]:
        """``evaluation.json`` (everything) and ``evaluation.csv`` (metrics, then the sample rows) in ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        js = folder / "evaluation.json"
        js.write_text(
            json.dumps(
                {"dataset": self.dataset, "rows": self.rows, "metrics": self.metrics, "examples": self.examples},
                indent=2,
            )
            + "\n"
        )
        cs = folder / "evaluation.csv"
        models = list(self.metrics)
        with cs.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(METRIC_COLUMNS)
            w.writerows(self.frame().values.tolist())
            w.writerow([])
            w.writerow(["prompt", "expected", *models])
            for ex in self.examples:
                w.writerow([ex["prompt"], ex["reference"], *[ex.get(m, "") for m in models]])
        return [js, cs]


def run_evaluation(
    engine: ChatEngine,
    adapters: list[str],
    dataset: str,
    *,
    max_samples: int = 32,
    max_new_tokens: int = 32,
    n_examples: int = 6,
    progress=None,
) -> Evaluation:
    """Evaluate each adapter folder in ``adapters`` (and the base model, once per base) on ``dataset``."""
    if not adapters:
        raise PeftlabError("pick at least one adapter to evaluate")
    result = Evaluation(dataset)
    labels = []
    bases: set[tuple] = set()
    for i, path in enumerate(adapters):
        label = adapter_label(path)
        while label in result.metrics or label == "base":
            label += "'"
        if progress is not None:
            progress(i / len(adapters), desc=f"evaluating {label} ({i + 1}/{len(adapters)})")
        loaded = engine.load(path)
        with engine.lock:
            loaded = engine._current(loaded)
            first_of_base = engine.base_key not in bases
            out = evaluate(
                engine.model,
                engine.tokenizer,
                dataset,
                adapter=loaded.name,
                compare_base=first_of_base,
                max_samples=max_samples,
                max_new_tokens=max_new_tokens,
                n_examples=n_examples,
            )
            bases.add(engine.base_key)
        result.rows = out["rows"]
        if first_of_base and "base" in out:
            name = "base" if "base" not in result.metrics else f"base ({loaded.base})"
            result.metrics[name] = out["base"]
        result.metrics[label] = out["adapted"]
        labels.append(label)
        examples = out.get("examples", [])
        if not result.examples:
            result.examples = [{"prompt": e["prompt"], "reference": e["reference"]} for e in examples]
            if "base" in out:
                for row, e in zip(result.examples, examples):
                    row["base"] = e.get("base", "")
        for row, e in zip(result.examples, examples):
            row[label] = e.get("adapted", "")
    if progress is not None:
        progress(1.0, desc="done")
    return result


@dataclass
class EvalTab:
    runs_dir: Path
    engine: ChatEngine = field(default_factory=ChatEngine)
    out_root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="peftlab-eval-")))
    _count: int = 0

    def choices(self, owners: list[str | None] | None = None) -> list[tuple[str, str]]:
        return adapter_choices(self.runs_dir, owners=owners or [None])

    def on_refresh(self, current: list[str] | None, browser: str | None = "", profile: gr.OAuthProfile | None = None):
        """The picker afresh: this session's runs (and a Hugging Face login's), then the store's."""
        fresh = self.choices(viewer(browser, profile))
        values = {v for _, v in fresh}
        return gr.Dropdown(choices=fresh, value=[c for c in (current or []) if c in values])

    def on_evaluate(
        self,
        picked: list[str] | None,
        typed: str,
        dataset: str | None,
        upload: str | None,
        max_samples: float,
        max_new_tokens: float,
        browser: str | None = "",
        profile: gr.OAuthProfile | None = None,
        oauth_token: gr.OAuthToken | None = None,
        progress=gr.Progress(),
    ) -> tuple:
        """Metrics table, samples HTML, status, and the export files. Only adapters this page may open
        (``open_adapter``: its own runs' and the store's when sessions are kept apart)."""
        where = list(picked or []) + [t.strip() for t in (typed or "").split(",") if t.strip()]
        source = upload or dataset
        if not where:
            return None, "", "**Pick at least one adapter** (or type a folder, store name or Hub id).", None
        if not source:
            return None, "", "**Pick a built-in dataset or upload a file.**", None
        try:
            owners, token = viewer(browser, profile), visitor_token(oauth_token)
            folders = [open_adapter(w, self.runs_dir, owners, token) for w in where]
            result = run_evaluation(
                self.engine,
                folders,
                source,
                max_samples=int(max_samples),
                max_new_tokens=int(max_new_tokens),
                progress=progress,
            )
        except (PeftlabError, OSError, ValueError, KeyError) as e:
            return None, "", f"**Cannot evaluate:** {e}", None
        self._count += 1
        files = result.export(self.out_root / f"eval-{self._count}")
        status = f"Evaluated {len(where)} adapter(s) on {result.rows} held-out row(s) of `{Path(str(source)).name}`."
        return result.frame(), samples_html(result.examples, list(result.metrics)), status, [str(f) for f in files]


def build(runs_dir: Path, tab: gr.Tab, owner=None) -> EvalTab:
    et = EvalTab(Path(runs_dir))
    gr.Markdown(HELP)
    datasets = builtin_datasets()
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=360):
            picked = gr.Dropdown(
                choices=et.choices([""] if owner is not None else None),
                multiselect=True,
                label="Adapters",
                info="Trained runs, newest first" + (", then the local store" if HAS_HUB else ""),
                elem_id="eval-adapters",
            )
            typed = gr.Textbox(
                label="…and/or folders" + (", store names, Hub ids" if HAS_HUB else "") + " (comma-separated)",
                elem_id="eval-typed",
            )
        with gr.Column(scale=5, min_width=360):
            dataset = gr.Dropdown(
                choices=list(datasets),
                value="capitals-json" if "capitals-json" in datasets else None,
                label="Built-in dataset",
                elem_id="eval-dataset",
            )
            upload = gr.File(
                label="…or upload a JSONL / CSV / Parquet file",
                height=110,
                file_types=[".jsonl", ".json", ".csv", ".parquet"],
                elem_id="eval-upload",
            )
    with gr.Row():
        max_samples = gr.Slider(4, 256, value=32, step=4, label="Held-out rows (at most)", elem_id="eval-rows")
        max_new = gr.Slider(8, 256, value=32, step=8, label="Max new tokens per reply", elem_id="eval-max-new")
    with gr.Row():
        run = gr.Button("Evaluate", variant="primary", elem_id="eval-run")
        refresh = gr.Button("Refresh adapters", elem_id="eval-refresh")
    status = gr.Markdown("", elem_id="eval-status")
    table = gr.Dataframe(headers=METRIC_COLUMNS, interactive=False, elem_id="eval-metrics")
    samples = gr.HTML("", elem_id="eval-samples")
    files = gr.File(label="Download (JSON, CSV)", file_count="multiple", interactive=False, elem_id="eval-files")

    listing = [picked, owner] if owner is not None else [picked]
    tab.select(et.on_refresh, listing, picked)
    refresh.click(et.on_refresh, listing, picked)
    run.click(
        et.on_evaluate,
        [picked, typed, dataset, upload, max_samples, max_new, *([owner] if owner is not None else [])],
        [table, samples, status, files],
        concurrency_limit=1,
        concurrency_id="evaluate",
    )
    return et


__all__ = ["EvalTab", "Evaluation", "build", "marked_reply", "run_evaluation", "samples_html"]
