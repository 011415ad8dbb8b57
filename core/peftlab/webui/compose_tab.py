"""The Compose tab (with ``peftlab-hub``): pick parent adapters (runs, the local store, Hub ids), set weights and the
combination type, sweep the weight of two parents on a dataset (eval loss and exact match against the weight), save
the composition as a new adapter under the runs folder, and chat with the parents and the composition side by side
— in one batched forward pass when every method allows mixed batches.

The work is ``peftlab_hub.compose`` / ``peftlab_hub.stack`` / ``peftlab_hub.sweep`` — what ``peftlab compose``
runs; the handlers only read the form and return widget updates (tests call them). A saved composition is a run of
its own, owned by the page that saved it (its ``job.json``), so the pickers offer it to that owner only when sessions
are kept apart; parents are opened as the Chat tab opens adapters (``adapters.open_adapter``)."""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import pandas as pd

from .. import jobs
from ..data.sources import builtin_datasets
from ..errors import PeftlabError
from ..generate import generate_batch
from ..io import META_FILE, RUN_ADAPTER_DIR
from ..plugins import methods
from .adapters import adapter_choices, adapter_label, open_adapter, viewer
from .chat_tab import visitor_token
from .engine import ChatEngine
from .owners import page_owner

HELP = (
    "Combine adapters: a **weighted merge** into one new adapter (LoRA-family `cat`, `svd`, `ties`, `dare_*`…, "
    "soft prompts, BitFit), or a **stack** that keeps every parent active. **Sweep** the weight of two parents on "
    "a dataset to see where the mix is best, **save** the result (it appears in every adapter picker), and "
    "**chat** with the parents and the composition side by side."
)
STACK = "stack"


def combination_types() -> list[str]:
    """Every weighted-merge type some installed method declares (``capabilities.combinations``), then ``stack``
    when ``peftlab_hub`` offers it."""
    seen: list[str] = []
    for m in methods():
        for c in m.capabilities.combinations:
            if c not in seen:
                seen.append(c)
    from importlib.util import find_spec

    return [*seen, STACK] if find_spec("peftlab_hub.stack") is not None else seen


def parse_weights(text: str, n: int) -> list[float] | None:
    """``"0.7, 0.3"`` → ``[0.7, 0.3]``; empty → ``None`` (1 each). A clear error for a wrong count or a bad number."""
    parts = [p for p in re.split(r"[,\s]+", (text or "").strip()) if p]
    if not parts:
        return None
    try:
        weights = [float(p) for p in parts]
    except ValueError:
        raise PeftlabError(f"weights must be numbers separated by commas, not {text!r}") from None
    if len(weights) != n:
        raise PeftlabError(f"{len(weights)} weight(s) for {n} parent(s): give one weight per parent")
    if not all(math.isfinite(w) for w in weights):
        raise PeftlabError(f"weights must be finite numbers, not {text!r}")
    return weights


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text.strip()).strip("-.") or "composition"


@dataclass
class ComposeTab:
    runs_dir: Path
    engine: ChatEngine = field(default_factory=ChatEngine)
    work: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="peftlab-compose-")))

    def choices(self, owners: list[str | None] | None = None) -> list[tuple[str, str]]:
        return adapter_choices(self.runs_dir, owners=owners or [None])

    def parents(
        self,
        picked: list[str] | None,
        typed: str,
        owners: list[str | None] | None = None,
        token: str | None = None,
    ) -> list[str]:
        """The parents' folders, if ``owners`` may open them (``open_adapter``; ``None``: the API, any)."""
        chosen = list(picked or []) + [t.strip() for t in (typed or "").split(",") if t.strip()]
        if not chosen:
            raise PeftlabError("pick at least one parent adapter (two for a sweep)")
        return [open_adapter(p, self.runs_dir, owners or [None], token) for p in chosen]

    def on_refresh(self, current: list[str] | None, browser: str | None = "", profile: gr.OAuthProfile | None = None):
        """The picker afresh: this session's runs (and a Hugging Face login's), then the store's."""
        fresh = self.choices(viewer(browser, profile))
        values = {v for _, v in fresh}
        return gr.Dropdown(choices=fresh, value=[c for c in (current or []) if c in values])

    def on_save(
        self,
        picked: list[str] | None,
        typed: str,
        weights: str,
        combination: str,
        density: float,
        svd_rank: float,
        name: str,
        browser: str | None = "",
        profile: gr.OAuthProfile | None = None,
        oauth_token: gr.OAuthToken | None = None,
        progress=gr.Progress(),
    ) -> tuple[str, str]:
        """Compose and save under ``runs_dir/<name>/adapter``, a new run folder (an existing one, another run's, is
        refused) owned by this page (``record_owner``); returns (status, the new adapter's folder)."""
        from peftlab_hub.compose import compose

        run = None
        try:
            owner = page_owner(browser, profile)
            if owner is None and not jobs.shared_jobs():  # it would be everyone's: the page has no owner id yet
                raise PeftlabError("this page has no owner id yet: reload the page and save again")
            parents = self.parents(picked, typed, viewer(browser, profile), visitor_token(oauth_token))
            ws = parse_weights(weights, len(parents))
            folder_name = _slug(name or f"composed-{time.strftime('%Y%m%d-%H%M%S')}")
            out = self.runs_dir / folder_name / RUN_ADAPTER_DIR
            try:
                out.parent.mkdir(parents=True)  # taken at once: never into a folder that exists (another run's)
            except FileExistsError:
                raise PeftlabError(f"{folder_name} already exists under the runs folder: pick another name") from None
            run = out.parent
            if progress is not None:
                progress(0.2, desc=f"composing {len(parents)} parent(s) ({combination})")
            if combination == STACK:
                from peftlab_hub.stack import stack

                folder = stack(parents, ws, output=out)
            else:
                folder = compose(
                    parents,
                    ws,
                    combination,
                    output=out,
                    density=float(density) if density else None,
                    svd_rank=int(svd_rank) if svd_rank else None,
                )
            record_owner(run, owner, combination, len(parents))
        except (PeftlabError, OSError, ValueError) as e:
            if run is not None:  # the folder this call made: nothing half-made is left behind
                shutil.rmtree(run, ignore_errors=True)
            return f"**Cannot compose:** {e}", ""
        return f"Saved **{Path(folder).parent.name}** ({combination} of {len(parents)} parents) to `{folder}`.", str(
            folder
        )

    def on_sweep(
        self,
        picked: list[str] | None,
        typed: str,
        dataset: str | None,
        points: float,
        browser: str | None = "",
        profile: gr.OAuthProfile | None = None,
        oauth_token: gr.OAuthToken | None = None,
        progress=gr.Progress(),
    ) -> tuple:
        """Sweep the weight of the first parent (the second gets 1 − w): (status, plot image, points table)."""
        from peftlab_hub.sweep import sweep

        try:
            parents = self.parents(picked, typed, viewer(browser, profile), visitor_token(oauth_token))
            if len(parents) != 2:
                raise PeftlabError(f"a sweep mixes exactly two parents; {len(parents)} picked")
            if not dataset:
                raise PeftlabError("pick a dataset for the sweep")
            n = max(2, int(points))
            grid = [round(i / (n - 1), 4) for i in range(n)]
            if progress is not None:
                progress(0.1, desc=f"sweeping {n} weights")
            out = self.work / f"sweep-{time.time_ns()}"
            result = sweep(parents, dataset, grid=grid, output=out, max_samples=16, quiet=True)
        except (PeftlabError, OSError, ValueError) as e:
            return f"**Cannot sweep:** {e}", None, None
        png = Path(result["output"]) / "sweep.png"
        table = pd.DataFrame(
            [[p["w"], round(p["eval_loss"], 4), p.get("exact_match")] for p in result["points"]],
            columns=["w", "eval loss", "exact match"],
        )
        best = result["best"]
        status = f"Best weight w = **{best['w']:g}** (eval loss {best['eval_loss']:.4f}) on {result['rows']} rows."
        return status, (str(png) if png.exists() else None), table

    def on_chat(
        self,
        picked: list[str] | None,
        typed: str,
        composed: str,
        message: str,
        browser: str | None = "",
        profile: gr.OAuthProfile | None = None,
        oauth_token: gr.OAuthToken | None = None,
        max_new_tokens: float = 48,
    ) -> tuple[pd.DataFrame | None, str]:
        """Each parent's, the composition's and the base model's reply to ``message``: one batched pass when every
        method mixes batches, else one pass each."""
        if not (message or "").strip():
            return None, "Type a message first."
        try:
            parents = self.parents(picked, typed, viewer(browser, profile), visitor_token(oauth_token))
            targets = [(adapter_label(p), p) for p in parents]
            if composed:
                targets.append((f"composition: {Path(composed).parent.name}", composed))
            loaded = [self.engine.load(path) for _, path in targets]
            n = int(max_new_tokens)
            with self.engine.lock:
                model, tok = self.engine.model, self.engine.tokenizer
                in_model = all(any(a is b for b in self.engine.adapters.values()) for a in loaded)
                if in_model and all(a.method.capabilities.mixed_batch for a in loaded):
                    rows = [a.name for a in loaded] + [None]  # every row its own adapter, the last the base
                    replies = generate_batch(model, tok, [message] * len(rows), max_new_tokens=n, rows=rows)
                    how = "one batched pass"
                else:  # a method that cannot mix batches (or stack): one pass each, reloading where needed
                    replies = []
                    for a in loaded:
                        a = self.engine._current(a)
                        replies += generate_batch(
                            self.engine.model, self.engine.tokenizer, [message], max_new_tokens=n, rows=[a.name]
                        )
                    replies += generate_batch(
                        self.engine.model, self.engine.tokenizer, [message], max_new_tokens=n, rows=[None]
                    )
                    how = f"{len(replies)} passes (a method cannot mix batches)"
        except (PeftlabError, OSError, ValueError, KeyError) as e:
            return None, f"**Cannot chat:** {e}"
        labels = [label for label, _ in targets] + ["base"]
        return pd.DataFrame({"model": labels, "reply": replies}), f"Replies in {how}."


def record_owner(run: Path, owner: str | None, combination: str, parents: int) -> None:
    """Make the saved composition a finished run of ``owner`` (its ``job.json``): the pickers (``saved_adapters``)
    and the Runs tab show it to that owner only when sessions are kept apart."""
    try:
        method = json.loads((run / RUN_ADAPTER_DIR / META_FILE).read_text()).get("method") or combination
    except (OSError, json.JSONDecodeError, AttributeError):
        method = combination
    job = jobs.Job(run, 0, [], str(method), "done", owner=owner)
    job.finished, job.message = job.started, f"composed from {parents} parent(s) ({combination})"
    job.save()


def build(runs_dir: Path, tab: gr.Tab, owner=None) -> ComposeTab:
    ct = ComposeTab(Path(runs_dir))
    gr.Markdown(HELP)
    kinds = combination_types()
    datasets = builtin_datasets()
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=360):
            picked = gr.Dropdown(
                choices=ct.choices([""] if owner is not None else None),
                multiselect=True,
                label="Parents",
                info="Trained runs, newest first, then the local store",
                elem_id="compose-parents",
            )
            typed = gr.Textbox(label="…and/or folders, store names, Hub ids (comma-separated)", elem_id="compose-typed")
            refresh = gr.Button("Refresh adapters", elem_id="compose-refresh")
        with gr.Column(scale=5, min_width=360):
            with gr.Row():
                weights = gr.Textbox(label="Weights", placeholder="one per parent, e.g. 0.7, 0.3 (empty: 1 each)",
                                     elem_id="compose-weights")  # fmt: skip
                combination = gr.Dropdown(
                    choices=kinds,
                    value="cat" if "cat" in kinds else (kinds[0] if kinds else None),
                    label="Combination",
                    elem_id="compose-combination",
                )
            with gr.Row():
                density = gr.Number(
                    value=None, label="Density (ties, dare_*, magnitude_prune)", elem_id="compose-density"
                )
                svd_rank = gr.Number(value=None, precision=0, label="SVD rank (*_svd)", elem_id="compose-svd-rank")
            with gr.Row():
                name = gr.Textbox(label="Name of the result", placeholder="composed-<time>", elem_id="compose-name")
                save = gr.Button("Compose and save", variant="primary", elem_id="compose-save")
            saved_status = gr.Markdown("", elem_id="compose-status")
    composed = gr.State("")
    with gr.Accordion("Weight sweep (two parents)", open=True, elem_id="compose-sweep-box"):
        with gr.Row():
            sweep_data = gr.Dropdown(
                choices=list(datasets),
                value="capitals-json" if "capitals-json" in datasets else None,
                label="Dataset",
                elem_id="compose-sweep-dataset",
            )
            points = gr.Slider(3, 11, value=5, step=1, label="Weights to try", elem_id="compose-sweep-points")
            sweep = gr.Button("Sweep", elem_id="compose-sweep")
        sweep_status = gr.Markdown("", elem_id="compose-sweep-status")
        with gr.Row():
            sweep_plot = gr.Image(
                label="Eval loss and exact match against w", type="filepath", elem_id="compose-sweep-plot"
            )
            sweep_table = gr.Dataframe(interactive=False, elem_id="compose-sweep-table")
    gr.Markdown("### Chat with the parents and the composition")
    with gr.Row():
        message = gr.Textbox(placeholder="A message for every model", show_label=False, scale=6, elem_id="compose-msg")
        send = gr.Button("Send", scale=1, elem_id="compose-send")
    chat_status = gr.Markdown("", elem_id="compose-chat-status")
    replies = gr.Dataframe(headers=["model", "reply"], interactive=False, wrap=True, elem_id="compose-replies")

    listing = [picked, owner] if owner is not None else [picked]
    whose = [owner] if owner is not None else []  # the browser's owner id: what the page may open, who owns a save
    tab.select(ct.on_refresh, listing, picked)
    refresh.click(ct.on_refresh, listing, picked)
    save.click(
        ct.on_save, [picked, typed, weights, combination, density, svd_rank, name, *whose], [saved_status, composed]
    ).then(ct.on_refresh, listing, picked)
    sweep.click(ct.on_sweep, [picked, typed, sweep_data, points, *whose], [sweep_status, sweep_plot, sweep_table],
                concurrency_limit=1, concurrency_id="compose-sweep")  # fmt: skip
    chat_args = dict(fn=ct.on_chat, inputs=[picked, typed, composed, message, *whose], outputs=[replies, chat_status])
    send.click(**chat_args, concurrency_limit=1, concurrency_id="compose-chat")
    message.submit(**chat_args, concurrency_limit=1, concurrency_id="compose-chat")
    return ct


__all__ = ["ComposeTab", "build", "combination_types", "parse_weights"]
