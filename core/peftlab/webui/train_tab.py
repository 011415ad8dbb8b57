"""The Train tab: base model, dataset, method + its generated config form, trainer settings, Start / Stop, live
progress and loss curve. Training runs in a child process (``peftlab.jobs``); a timer polls its progress file.

The ``_*_inputs`` / ``_progress_outputs`` functions only build widgets; ``build`` wires their events to the
``TrainTab`` methods, which only read the form and call what the CLI calls: ``jobs.start_job`` checks the
settings with ``TrainArgs.from_strings`` (so ``TrainArgs`` and the method config validate them, once).

Each browser gets an owner id (kept in its local storage, so a reload keeps it); a user logged in with Hugging Face
(``gr.OAuthProfile``: the Space's login) is the owner ``hf:<username>`` instead, in any browser. Jobs are started
with the owner, and the tab reattaches to, shows and stops only that owner's jobs (``jobs.visible``;
``PEFTLAB_SHARE_JOBS=1`` shares them). Jobs beyond ``jobs.max_jobs()`` wait in a queue; the tab shows the place."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from .. import jobs
from ..data.rows import DatasetError, dataset_task
from ..data.sources import builtin_datasets, load_rows
from ..errors import PeftlabError
from ..plugins import MethodHandle, methods
from ..schema import FieldSpec
from . import forms
from .plots import loss_chart
from .progress import IDLE, STOPPING, job_view

POLL_SECONDS = 1.0
STOP_TIMEOUT = 120.0  # seconds the trainer gets to finish its step and save before it is killed
N_OUTPUTS = 9  # what ``outputs_for`` returns: run, seen, status, progress, params, plot, timer, start, stop


def outputs_for(job: jobs.Job | None, seen: int) -> list:
    """Values for [run_state, seen_state, status, progress, params, plot, timer, start, stop]."""
    place = jobs.queue_place(job) if job is not None and job.status == jobs.QUEUED else None
    if place is not None:
        running = "a running job ends" if jobs.max_jobs() == 1 else f"one of the {jobs.max_jobs()} running jobs ends"
        status = (
            f"**Queued** `{job.name}` ({job.method}): place **{place}** in the queue; it starts when "
            f"{running}. Reloading the page reattaches to it; **Stop** takes it off the queue."
        )
        return [
            str(job.run_dir),
            0,
            status,
            "waiting for a free slot…",
            "",
            gr.skip() if seen == 0 else None,
            gr.Timer(active=True),
            gr.Button(interactive=False),
            gr.Button(interactive=True),
        ]
    view = job_view(job)
    events = job.events() if job else []
    drawn = gr.skip() if len(events) == seen else loss_chart(events)  # None (an empty plot) before a point
    return [
        str(job.run_dir) if job else "",
        len(events),
        view.status,
        view.progress,
        view.params,
        drawn,
        gr.Timer(active=view.running),
        gr.Button(interactive=not view.running),
        gr.Button(interactive=view.running and not job.stop_requested),
    ]


@dataclass
class TrainTab:
    """The tab's widgets (tests and the browser test find them by these and by ``elem_id``) and its handlers."""

    method: gr.Dropdown
    forms: dict[str, list] = field(default_factory=dict)  # method → widgets, in config field order
    groups: dict[str, gr.Group] = field(default_factory=dict)
    specs: dict[str, list] = field(default_factory=dict)  # method → FieldSpecs
    train_widgets: list = field(default_factory=list)  # in ``train_specs`` order
    train_specs: list[FieldSpec] = field(default_factory=list)
    handles: dict[str, MethodHandle] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)  # "base", "dataset", "upload" widgets
    runs_dir: Path = Path("runs")
    owner: Any = None  # the gr.BrowserState holding this browser's owner id

    def owner_of(self, v: dict | str | None) -> str:
        """The browser's owner id (from the form values or the state's value), a new one if it has none yet."""
        value = v.get(self.owner, "") if isinstance(v, dict) else v
        return value or uuid.uuid4().hex

    def who(self, browser: str | None, profile: gr.OAuthProfile | None = None) -> str | None:
        """Who owns the jobs this page starts and sees: the Hugging Face user when logged in, else the browser."""
        return user_owner(profile) or browser or None

    def on_method(self, name: str) -> list:
        """[method info, learning-rate placeholder, one visibility per method form]."""
        m = self.handles.get(name)
        return [
            capability_text(m) if m else "",
            gr.Textbox(placeholder=lr_hint(m) if m else ""),
            *[gr.Group(visible=n == name) for n in self.handles],
        ]

    def read_form(self, v: dict) -> tuple[str, dict[str, Any], dict[str, str]]:
        """(method, trainer settings, method flags) as text, only what differs from the defaults."""
        name = v[self.method]
        if name not in self.handles:
            raise gr.Error("Pick a method first.")
        flags = forms.changed_flags(self.specs[name], [v[w] for w in self.forms[name]])
        settings: dict[str, Any] = forms.changed_flags(self.train_specs, [v[w] for w in self.train_widgets])
        settings["dataset"] = v[self.inputs["upload"]] or v[self.inputs["dataset"]]
        settings["base_model"] = (v[self.inputs["base"]] or "").strip() or None
        return name, settings, flags

    def on_start(self, v: dict, profile: gr.OAuthProfile | None = None) -> list:
        """Start (or queue, when ``jobs.max_jobs()`` run already) a job owned by this page's user (``who``); the
        outputs, then the browser's owner id (for the browser state)."""
        name, settings, flags = self.read_form(v)
        if not settings["dataset"]:
            raise gr.Error("Pick a built-in dataset or upload a file.")
        browser = self.owner_of(v)
        try:  # checks every setting as `peftlab train` does, and reads the dataset, before a process starts
            job = jobs.start_job(self.runs_dir, name, settings, flags, queue=True, owner=self.who(browser, profile))
        except PeftlabError as e:
            raise gr.Error(str(e)) from None
        return [*outputs_for(job, -1), browser]

    def _job(self, run_dir: str, owner: str | None) -> jobs.Job | None:
        """The job in ``run_dir`` if this browser may see it."""
        if not run_dir or not Path(run_dir, jobs.JOB_FILE).exists():
            return None
        job = jobs.Job.load(run_dir).refresh()
        return job if jobs.visible(job, owner or "") else None

    def on_poll(self, run_dir: str, seen: int, owner: str | None = None, profile: gr.OAuthProfile | None = None):
        return outputs_for(self._job(run_dir, self.who(owner, profile)), seen)

    def on_stopping(self) -> tuple:
        return f"**Stopping…** {STOPPING}", gr.Button(interactive=False)

    def on_stop(self, run_dir: str, owner: str | None = None, profile: gr.OAuthProfile | None = None) -> list:
        owner = self.who(owner, profile)
        job = self._job(run_dir, owner)
        if job is None:
            return [gr.skip()] * 2 + ["Nothing to stop."] + [gr.skip()] * (N_OUTPUTS - 3)
        try:
            return outputs_for(jobs.stop(job, timeout=STOP_TIMEOUT, owner=owner or ""), -1)
        except jobs.JobError as e:
            raise gr.Error(str(e)) from None

    def on_load(self, owner: str | None = None, profile: gr.OAuthProfile | None = None) -> list:
        """A page (re)load reattaches to this user's (``who``) job still running or queued, if any (else leaves the
        page as it is, so a Start pressed before this ran is not undone); then the browser's owner id (a new one for
        a browser that has none)."""
        owner = self.owner_of(owner)
        job = jobs.current_job(self.runs_dir, self.who(owner, profile))
        return [*(outputs_for(job, -1) if job is not None else [gr.skip()] * N_OUTPUTS), owner]


def user_owner(profile: gr.OAuthProfile | None) -> str | None:
    """The owner id of a Hugging Face login (``hf:<username>``), or None when nobody is logged in."""
    name = getattr(profile, "username", None) if profile is not None else None
    return f"hf:{name}" if name else None


def capability_text(m: MethodHandle) -> str:
    """What the method can do, in words (the capabilities drive what the app offers)."""
    c = m.capabilities
    lines = [f"**{m.name}** — {m.description or 'no description'} (plugin `{m.plugin}`)", ""]
    lines.append("- mergeable: yes" if c.mergeable else f"- mergeable: no — {c.merge_note or 'the method says so'}")
    lines.append(
        "- stackable with other adapters: yes"
        if c.stackable
        else f"- stackable: no — {c.stack_note or 'the method says so'}"
    )
    if c.kv_cache:
        lines.append("- works through the KV cache (prefix keys/values)")
    if c.virtual_tokens:
        lines.append("- adds virtual tokens to the input")
    if c.needs_quantized_base:
        lines.append("- loads its own quantized base model")
    lines.append(
        "- chat: adapted and base replies in one batched pass"
        if c.mixed_batch
        else "- chat: adapted and base replies in two passes (no mixed batches)"
    )
    lines.append(f"- tasks: {', '.join(c.task_types)}")
    lr = m.train_defaults.get("learning_rate")
    lines.append(f"- default learning rate: {lr:g}" if lr else "- default learning rate: the trainer's (2e-3)")
    return "\n".join(lines)


def lr_hint(m: MethodHandle) -> str:
    return f"empty = {m.train_defaults.get('learning_rate', 2e-3):g} ({m.name}'s default)"


def dataset_text(name: str | None, upload: str | None) -> str:
    if upload:
        return upload_text(upload)
    info = builtin_datasets().get(name or "")
    return f"{info.description} ({info.task}, metric: {info.metric})" if info else "Pick a dataset."


def upload_text(path: str | None) -> str:
    """Validate an uploaded file with the trainer's own reader; say what is wrong, with file and line."""
    if not path:
        return ""
    try:
        rows = load_rows(path)
    except (DatasetError, PeftlabError, OSError) as e:
        return f"**This file cannot be used:** {e}"
    return (
        f"✓ uploaded file `{Path(path).name}`: {len(rows)} rows, task {dataset_task(rows)} (used instead of "
        f"the built-in dataset; clear it to go back)"
    )


def _model_and_data_inputs() -> dict[str, Any]:
    datasets = builtin_datasets()
    default_ds = "capitals-json" if "capitals-json" in datasets else next(iter(datasets), None)
    gr.Markdown("### 1 · Model and data")
    return {
        "base": gr.Textbox(
            label="Base model",
            placeholder="empty = SmolLM2-135M-Instruct (offline)",
            info="A Hub id or a local model folder",
            elem_id="train-base",
        ),
        "dataset": gr.Dropdown(
            choices=list(datasets), value=default_ds, label="Built-in dataset", elem_id="train-dataset"
        ),
        "upload": gr.File(
            label="…or upload a JSONL / CSV / Parquet file",
            height=150,
            elem_id="train-upload",
            file_types=[".jsonl", ".json", ".csv", ".parquet"],
        ),
        "dataset_info": gr.Markdown(dataset_text(default_ds, None), elem_id="train-dataset-info"),
    }


def _method_inputs(handles: dict[str, MethodHandle], first: str | None) -> tuple[TrainTab, gr.Markdown]:
    """The method dropdown, its capabilities, and one generated config form per method (only ``first`` shown)."""
    gr.Markdown("### 2 · Method")
    method = gr.Dropdown(
        choices=list(handles),
        value=first,
        label="Method",
        elem_id="train-method",
        info="Every installed plugin's method; its settings appear below",
    )
    info = gr.Markdown(
        capability_text(handles[first]) if first else "No method plugin installed.", elem_id="train-method-info"
    )
    tab = TrainTab(method, handles=handles)
    for m in handles.values():
        specs = m.config_class.fields()
        with gr.Group(visible=m.name == first, elem_id=f"method-form-{m.name}") as group:
            widgets = []
            for i in range(0, len(specs), 2):
                with gr.Row():
                    widgets += [forms.field_component(s, f"cfg-{m.name}-{s.name}") for s in specs[i : i + 2]]
        tab.forms[m.name], tab.groups[m.name], tab.specs[m.name] = widgets, group, specs
    return tab, info


def _training_inputs(tab: TrainTab, first: str | None) -> gr.Textbox:
    """``TrainArgs``'s settings: the main ones in a row, the rest in an accordion. Returns the LR box."""
    gr.Markdown("### 3 · Training")
    tab.train_specs = forms.train_specs()
    main = [s for s in tab.train_specs if s.name in forms.MAIN_TRAIN_FIELDS]
    more = [s for s in tab.train_specs if s.name not in forms.MAIN_TRAIN_FIELDS]
    widgets = {}
    with gr.Row():
        for s in main:
            widgets[s.name] = forms.train_component(s)
    with gr.Accordion("More training settings", open=False, elem_id="train-more"):
        for i in range(0, len(more), 3):
            with gr.Row():
                for s in more[i : i + 3]:
                    widgets[s.name] = forms.train_component(s)
    tab.train_widgets = [widgets[s.name] for s in tab.train_specs]
    if first:
        widgets["learning_rate"].placeholder = lr_hint(tab.handles[first])
    return widgets["learning_rate"]


def _progress_outputs() -> list:
    gr.Markdown("### Progress")
    return [
        gr.Markdown(IDLE, elem_id="train-status"),
        gr.Markdown("", elem_id="train-progress"),
        gr.Markdown("", elem_id="train-params"),
        gr.Plot(label="Loss", elem_id="loss-plot"),
    ]


def build(demo: gr.Blocks, runs_dir: Path) -> TrainTab:
    handles = {m.name: m for m in methods()}
    first = "lora" if "lora" in handles else next(iter(handles), None)
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=380):
            inputs = _model_and_data_inputs()
            tab, method_info = _method_inputs(handles, first)
            lr = _training_inputs(tab, first)
            with gr.Row():
                start = gr.Button("Start training", variant="primary", elem_id="train-start")
                stop = gr.Button("Stop", variant="stop", interactive=False, elem_id="train-stop")
        with gr.Column(scale=6, min_width=380):
            status, progress, params, plot = _progress_outputs()
    tab.inputs, tab.runs_dir = inputs, Path(runs_dir)
    # this browser's owner id, in its local storage (a reload keeps it); the secret only makes it opaque there
    tab.owner = gr.BrowserState(
        "", storage_key="peftlab-owner", secret=os.environ.get("PEFTLAB_SECRET") or f"peftlab:{tab.runs_dir.resolve()}"
    )
    run_state = gr.State("")  # the run folder this page follows
    seen_state = gr.State(-1)  # events already drawn (skip redrawing an unchanged plot)
    timer = gr.Timer(POLL_SECONDS, active=False)
    outs = [run_state, seen_state, status, progress, params, plot, timer, start, stop]
    form = {
        tab.method,
        inputs["base"],
        inputs["dataset"],
        inputs["upload"],
        tab.owner,
        *tab.train_widgets,
        *(w for ws in tab.forms.values() for w in ws),
    }

    tab.method.change(tab.on_method, tab.method, [method_info, lr, *tab.groups.values()])
    for source in (inputs["dataset"], inputs["upload"]):
        source.change(dataset_text, [inputs["dataset"], inputs["upload"]], inputs["dataset_info"])
    start.click(tab.on_start, form, [*outs, tab.owner], concurrency_limit=1, show_progress="hidden")
    timer.tick(tab.on_poll, [run_state, seen_state, tab.owner], outs, show_progress="hidden")
    stop.click(tab.on_stopping, None, [status, stop], show_progress="hidden").then(
        tab.on_stop, [run_state, tab.owner], outs
    )
    demo.load(tab.on_load, tab.owner, [*outs, tab.owner], show_progress="hidden")
    return tab


__all__ = ["TrainTab", "build", "capability_text", "upload_text", "user_owner"]
