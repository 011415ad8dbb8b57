"""The Compare tab: chosen methods (all installed by default) trained on one dataset with one budget of steps, in
the background (``peftlab.compare.start_background``: a page reload reattaches), progress per method, then the
survey table measured on your data — trainable parameters and share, peak memory, step time, eval loss before and
after, exact match, generate speed, mergeable — and two charts: exact match against trainable share, and every
method's loss curve on one plot."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd

from .. import compare, jobs
from ..data.sources import builtin_datasets
from ..errors import PeftlabError
from ..plugins import methods
from .owners import page_owner
from .plots import series_chart

HELP = (
    "Train several methods on the same data with the same budget and compare them side by side. It runs in the "
    "background, one method after another: reload the page any time. Each method trains from scratch on the "
    "default base model (SmolLM2-135M-Instruct unless you give another)."
)
POLL_SECONDS = 2.0
TABLE_COLUMNS = [title for _, title in compare.FIELDS]
SHARE_TITLE = "Exact match against trainable share"


def table_frame(rows: list[dict]) -> pd.DataFrame:
    """The survey table: one row per method, the columns of ``peftlab compare``; a failed method shows its error."""
    out = []
    for r in rows:
        if "error" in r:
            out.append([r["method"], f"error: {r['error']}"] + [""] * (len(TABLE_COLUMNS) - 2))
        else:
            out.append([compare._cell(r.get(key)) for key, _ in compare.FIELDS])
    return pd.DataFrame(out, columns=TABLE_COLUMNS)


def curves_frame(curves: dict[str, list]) -> pd.DataFrame | None:
    rows = [{"step": int(s), "loss": float(loss), "method": m} for m, pts in curves.items() for s, loss in pts]
    if not rows:
        return None
    return pd.DataFrame(rows).astype({"step": "int64", "loss": "float64", "method": "object"})


def share_frame(rows: list[dict]) -> pd.DataFrame | None:
    """Exact match against the trainable share (percent of the model), one point per finished method."""
    pts = [
        {"trainable %": float(r["percent"]), "exact match": float(r["exact_match"]), "method": r["method"]}
        for r in rows
        if "error" not in r and r.get("exact_match") is not None and r.get("percent") is not None
    ]
    return pd.DataFrame(pts) if pts else None


def status_text(st: dict) -> str:
    done, total = len(st["rows"]), len(st["methods"])
    head = f"Comparison `{Path(st['folder']).name}` on `{st['dataset']}`, {st['steps']} step(s) per method: "
    if st["running"]:
        cur = st.get("current")
        now = f" — now **{cur['method']}**, step {cur['step']}/{cur['steps']}" if cur else " — starting…"
        return head + f"**{done}/{total}** method(s) done{now}."
    failed = [r["method"] for r in st["rows"] if "error" in r]
    tail = f" ({len(failed)} failed: {', '.join(failed)})" if failed else ""
    return head + f"**finished**: {done}/{total} method(s){tail}."


def progress_fraction(st: dict) -> float:
    total = max(len(st["methods"]), 1)
    cur = st.get("current")
    part = (cur["step"] / max(cur["steps"], 1)) if cur else 0.0
    return min(1.0, (len(st["rows"]) + part) / total)


@dataclass
class CompareTab:
    runs_dir: Path

    def outputs(self, folder: str | None) -> list:
        """[folder state, status, progress, table, share plot, curves plot, timer, start, stop]."""
        if not folder:
            return ["", "No comparison yet.", "", None, None, None, gr.Timer(active=False), gr.Button(interactive=True),
                    gr.Button(interactive=False)]  # fmt: skip
        st = compare.background_status(folder)
        pct = progress_fraction(st)
        bar = f'<progress id="compare-bar" max="100" value="{pct * 100:.0f}"></progress> {pct * 100:.0f}%'
        return [
            folder,
            status_text(st),
            bar,
            table_frame(st["rows"]),
            series_chart(share_frame(st["rows"]), "trainable %", "exact match", "method", SHARE_TITLE, mark="point"),
            series_chart(curves_frame(st["curves"]), "step", "loss", "method", "Training loss"),
            gr.Timer(active=st["running"]),
            gr.Button(interactive=not st["running"]),
            gr.Button(interactive=st["running"]),
        ]

    def on_start(self, picked, dataset, upload, steps, base, owner=None, profile: gr.OAuthProfile | None = None):
        owner = page_owner(owner, profile)
        try:
            if steps is None or steps == "":
                raise ValueError("give the number of steps per method")
            if owner is None and not jobs.shared_jobs():  # it would be everyone's: the page has no owner id yet
                raise ValueError("this page has no owner id yet: reload the page and start again")
            folder = compare.start_background(
                self.runs_dir,
                list(picked or []),
                upload or dataset or "capitals-json",
                int(steps),
                (base or "").strip() or None,
                owner=owner,
            )
        except (
            ValueError,
            TypeError,
            LookupError,
            PeftlabError,
            OSError,
        ) as e:  # an unknown method: the registry's message
            out = self.outputs(None)
            out[1] = f"**Cannot start:** {e}"
            return out
        return self.outputs(str(folder))

    def on_poll(self, folder: str) -> list:
        return self.outputs(folder or None)

    def on_stop(self, folder: str, owner=None, profile: gr.OAuthProfile | None = None) -> list:
        """Stop this page's comparison; another session's is refused (``compare.stop_background``)."""
        if folder:
            try:
                compare.stop_background(folder, owner=page_owner(owner, profile) or "")
            except (PeftlabError, OSError, ValueError) as e:
                out = self.outputs(None)
                out[1] = f"**Cannot stop:** {e}"
                return out
        return self.outputs(folder or None)

    def on_load(self, owner=None, profile: gr.OAuthProfile | None = None) -> list:
        """A page (re)load shows this page's newest comparison; a page without an owner yet has none (never
        anyone else's)."""
        owner = page_owner(owner, profile)
        latest = compare.latest_background(self.runs_dir, owner) if owner else None
        return self.outputs(str(latest) if latest else None)


def build(demo: gr.Blocks, runs_dir: Path, owner) -> CompareTab:
    ct = CompareTab(Path(runs_dir))
    names = [m.name for m in methods()]
    datasets = builtin_datasets()
    gr.Markdown(HELP)
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=360):
            picked = gr.CheckboxGroup(choices=names, value=names, label="Methods", elem_id="compare-methods")
            with gr.Row():
                dataset = gr.Dropdown(
                    choices=list(datasets),
                    value="capitals-json" if "capitals-json" in datasets else None,
                    label="Built-in dataset",
                    elem_id="compare-dataset",
                )
                steps = gr.Number(value=30, precision=0, minimum=1, label="Steps per method", elem_id="compare-steps")
            upload = gr.File(
                label="…or upload a JSONL / CSV / Parquet file",
                height=100,
                file_types=[".jsonl", ".json", ".csv", ".parquet"],
                elem_id="compare-upload",
            )
            base = gr.Textbox(label="Base model", placeholder="empty = SmolLM2-135M-Instruct", elem_id="compare-base")
            with gr.Row():
                start = gr.Button("Compare", variant="primary", elem_id="compare-start")
                stop = gr.Button("Stop", variant="stop", interactive=False, elem_id="compare-stop")
        with gr.Column(scale=6, min_width=360):
            status = gr.Markdown("No comparison yet.", elem_id="compare-status")
            bar = gr.HTML("", elem_id="compare-progress")
            curves = gr.Plot(label="Training loss", elem_id="compare-curves")
    table = gr.Dataframe(headers=TABLE_COLUMNS, interactive=False, wrap=True, elem_id="compare-table")
    share = gr.Plot(label=SHARE_TITLE, elem_id="compare-share")
    folder = gr.State("")
    timer = gr.Timer(POLL_SECONDS, active=False)
    outs = [folder, status, bar, table, share, curves, timer, start, stop]
    start.click(ct.on_start, [picked, dataset, upload, steps, base, owner], outs, concurrency_limit=1)
    timer.tick(ct.on_poll, folder, outs, show_progress="hidden")
    stop.click(ct.on_stop, [folder, owner], outs)
    demo.load(ct.on_load, owner, outs, show_progress="hidden")
    return ct


__all__ = ["CompareTab", "build", "curves_frame", "share_frame", "table_frame"]
