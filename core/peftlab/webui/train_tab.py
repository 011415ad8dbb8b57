"""The Train tab: base model, dataset, method + its generated config form, trainer settings, Start / Stop, live
progress and loss curve. Training runs in a child process (``peftlab.jobs``); a timer polls its progress file.

The ``_*_inputs`` / ``_progress_outputs`` functions only build widgets; ``build`` wires their events to the
``TrainTab`` methods, which only read the form and call what the CLI calls: ``jobs.start_job`` checks the
settings with ``TrainArgs.from_strings`` (so ``TrainArgs`` and the method config validate them, once).

Each browser gets an owner id (kept in its local storage, so a reload keeps it); a user logged in with Hugging Face
(``gr.OAuthProfile``: the Space's login) is the owner ``hf:<username>`` instead, in any browser (``owners``: a
browser's value is trusted only as an id this server issued). Jobs are started with the owner, and the tab
reattaches to, shows and stops only that owner's jobs (``jobs.visible``; ``PEFTLAB_SHARE_JOBS=1`` shares them). A
logged-in user's job gets their own Hugging Face token (``gr.OAuthToken``), never the server's. Jobs beyond
``jobs.max_jobs()`` wait in a queue; the tab shows the place."""

from __future__ import annotations

import json
import os
import re
import shlex
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from .. import jobs
from ..data.rows import DatasetError, dataset_task
from ..data.sources import builtin_datasets, load_rows
from ..errors import PeftlabError
from ..plugins import MethodHandle, methods
from ..schema import FieldSpec
from ..train import last_checkpoint
from . import forms
from .owners import browser_id, new_browser_id, page_owner, user_owner
from .plots import loss_chart
from .progress import IDLE, STOPPING, job_view

POLL_SECONDS = 1.0
STOP_TIMEOUT = 120.0  # seconds the trainer gets to finish its step and save before it is killed
N_OUTPUTS = 11  # ``outputs_for``: run, seen, status, progress, params, plot, timer, start, stop, resume, bar


def outputs_for(job: jobs.Job | None, seen: int) -> list:
    """Values for [run_state, seen_state, status, progress, params, plot, timer, start, stop, resume, bar]."""
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
            gr.Button(interactive=False),
            "",
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
        gr.Button(interactive=resumable(job)),
        progress_bar(events) if job is not None else "",
    ]


def resumable(job: jobs.Job | None) -> bool:
    """A stopped, failed or interrupted job with a checkpoint to continue from."""
    return job is not None and job.status in jobs.FINISHED[1:] and last_checkpoint(job.run_dir) is not None


def progress_bar(events: list[dict]) -> str:
    """An HTML progress bar: steps done of the run's steps (empty before the trainer starts)."""
    start = next((e for e in reversed(events) if e.get("event") == "start"), None)
    if not start or not start.get("steps"):
        return ""
    done = max((e["step"] for e in events if e.get("event") == "step"), default=0)
    if any(e.get("event") == "done" for e in events[-3:]):
        done = start["steps"]
    pct = min(100, round(100 * done / start["steps"]))
    return f'<progress id="train-bar" max="100" value="{pct}" aria-label="training progress"></progress> {pct}%'


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
    run_name: Any = None  # the "Run name" textbox

    @property
    def form_widgets(self) -> list:
        """The widgets a saved or running job's settings fill: method, base, dataset, run name, trainer settings,
        every method's config form."""
        return [
            self.method,
            self.inputs["base"],
            self.inputs["dataset"],
            self.run_name,
            *self.train_widgets,
            *(w for name in self.handles for w in self.forms[name]),
        ]

    def form_values(self, form: dict) -> list:
        """Values for ``form_widgets`` from ``{"method", "settings", "flags"}`` (text, as ``read_form`` gives and
        ``job.json`` keeps); what is not there gets its default."""
        settings, flags = dict(form.get("settings") or {}), dict(form.get("flags") or {})
        method = form.get("method") if form.get("method") in self.handles else self.method.value
        dataset = settings.get("dataset")
        builtin = dataset if dataset in builtin_datasets() else gr.skip()  # an uploaded file cannot come back
        out = [method, settings.get("base_model") or "", builtin, form.get("name") or ""]
        out += [forms.widget_value(spec, settings.get(spec.name)) for spec in self.train_specs]
        for name in self.handles:
            out += [
                forms.widget_value(spec, flags.get(spec.name) if name == method else None) for spec in self.specs[name]
            ]
        return out

    def owner_of(self, v: dict | str | None) -> str:
        """The browser's owner id (from the form values or the state's value), a new one if it has none yet, or sent
        one this server did not issue (``owners.browser_id``)."""
        value = v.get(self.owner, "") if isinstance(v, dict) else v
        return browser_id(value) or new_browser_id()

    def who(self, browser: str | None, profile: gr.OAuthProfile | None = None) -> str | None:
        """Who owns the jobs this page starts and sees: the Hugging Face user when logged in, else the browser."""
        return page_owner(browser, profile)

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

    def on_command(self, v: dict) -> str:
        """The ``peftlab train`` command line the form amounts to (to copy into a terminal)."""
        name, settings, flags = self.read_form(v)
        run = (v.get(self.run_name) or "").strip() or f"<time>-{name}"
        return command_line(name, settings, flags, self.runs_dir / run)

    def on_save_settings(self, v: dict) -> str:
        """The form as a JSON file to download (``Load settings`` reads it back)."""
        name, settings, flags = self.read_form(v)
        data = {"peftlab_settings": 1, "method": name, "settings": settings, "flags": flags}
        data["name"] = (v.get(self.run_name) or "").strip()
        if data["name"] and not jobs.RUN_NAME.match(data["name"]):  # it names the file: never a path
            raise gr.Error(
                f"Run name {data['name']!r}: use letters, digits, '_', '.' and '-' (not starting with a dot)."
            )
        folder = Path(tempfile.mkdtemp(prefix="peftlab-settings-"))
        file = folder / f"{data['name'] or re.sub(r'[^A-Za-z0-9_.-]+', '-', name).lstrip('.')}-settings.json"
        file.write_text(json.dumps(data, indent=2) + "\n")
        return str(file)

    def on_load_settings(self, file: str | None) -> list:
        if not file:
            return [gr.skip()] * len(self.form_widgets)
        try:
            data = json.loads(Path(file).read_text())
            if not isinstance(data, dict) or "method" not in data:
                raise ValueError("not a peftlab settings file (no method)")
            for key in ("settings", "flags"):
                if not isinstance(data.get(key) or {}, dict):
                    raise ValueError(f"{key!r} must be an object of names and values, not {type(data[key]).__name__}")
        except (OSError, ValueError) as e:
            raise gr.Error(f"Cannot load these settings: {e}") from None
        return self.form_values(data)

    def on_start(
        self, v: dict, profile: gr.OAuthProfile | None = None, oauth_token: gr.OAuthToken | None = None
    ) -> list:
        """Start (or queue, when ``jobs.max_jobs()`` run already) a job owned by this page's user (``who``); the
        outputs, then the browser's owner id (for the browser state). A logged-in user's token goes to their job
        (``hub_env``), in memory only."""
        name, settings, flags = self.read_form(v)
        if not settings["dataset"]:
            raise gr.Error("Pick a built-in dataset or upload a file.")
        browser = self.owner_of(v)
        try:  # checks every setting as `peftlab train` does, and reads the dataset, before a process starts
            job = jobs.start_job(
                self.runs_dir,
                name,
                settings,
                flags,
                queue=True,
                env=hub_env(oauth_token),
                owner=self.who(browser, profile),
                name=(v.get(self.run_name) or "").strip() or None,
            )
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
        if job is None:
            return [*[gr.skip()] * N_OUTPUTS, owner, *[gr.skip()] * len(self.form_widgets)]
        form = self.form_values({**job.form, "name": job.name}) if job.form else [gr.skip()] * len(self.form_widgets)
        return [*outputs_for(job, -1), owner, *form]  # the running job's settings, not the defaults

    def on_resume(
        self,
        run_dir: str,
        owner: str | None = None,
        profile: gr.OAuthProfile | None = None,
        oauth_token: gr.OAuthToken | None = None,
    ) -> list:
        """Continue this page's stopped or interrupted job from its last checkpoint."""
        owner = self.who(owner, profile)
        job = self._job(run_dir, owner)
        if job is None:
            raise gr.Error("No stopped run to resume on this page.")
        try:
            return outputs_for(jobs.resume_job(job, owner=owner or "", env=hub_env(oauth_token)), -1)
        except jobs.JobError as e:
            raise gr.Error(str(e)) from None


def hub_env(oauth_token: gr.OAuthToken | None) -> dict[str, str]:
    """The environment that hands a logged-in user's own Hugging Face token to their job (``HF_TOKEN``; ``jobs``
    keeps it out of ``job.json``); none without a login. (The server's own token never reaches a visitor's job when
    sessions are kept apart: ``jobs.child_environment``.)"""
    token = getattr(oauth_token, "token", None) if oauth_token is not None else None
    return {"HF_TOKEN": token} if token else {}


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


def preview_frame(name: str | None, upload: str | None, n: int = 5) -> pd.DataFrame:
    """The first ``n`` rows of the chosen dataset (the upload wins), as the trainer reads them; empty if unreadable."""
    try:
        rows = load_rows(upload or name) if (upload or name) else []
    except (DatasetError, PeftlabError, OSError):
        rows = []
    out = []
    for row in rows[:n]:
        cells = {}
        for key, value in row.items():
            if isinstance(value, list):  # chat messages: one line per turn
                value = "\n".join(
                    f"{m.get('role')}: {m.get('content')}" if isinstance(m, dict) else str(m) for m in value
                )
            cells[key] = str(value)
        out.append(cells)
    return pd.DataFrame(out)


def on_dataset(name: str | None, upload: str | None) -> tuple:
    """Dataset info, its first rows, and whether Start may be pressed (not with an unusable upload)."""
    text = dataset_text(name, upload)
    usable = not text.startswith("**This file cannot be used")
    return (
        text,
        preview_frame(name, upload if usable else None) if usable else pd.DataFrame(),
        gr.Button(interactive=usable),
    )


def command_line(method: str, settings: dict[str, Any], flags: dict[str, str], out: Path) -> str:
    """``peftlab train ...`` for these settings (the job's own argv, with ``peftlab`` for ``python -m peftlab``)."""
    argv = jobs.train_command(method, settings, flags, out)
    argv = ["peftlab", *argv[3:]]
    if "--json" in argv:
        argv.remove("--json")
    return shlex.join(argv)


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
        "preview": gr.Dataframe(
            preview_frame(default_ds, None),
            label="First rows",
            interactive=False,
            wrap=True,
            max_height=220,
            elem_id="train-preview",
        ),
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
        gr.HTML("", elem_id="train-progress-bar"),
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
            tab.run_name = gr.Textbox(
                label="Run name", placeholder="empty = <time>-<method>", elem_id="train-run-name", max_lines=1
            )
            with gr.Row():
                start = gr.Button("Start training", variant="primary", elem_id="train-start")
                stop = gr.Button("Stop", variant="stop", interactive=False, elem_id="train-stop")
                resume = gr.Button("Resume", interactive=False, elem_id="train-resume")
            with gr.Accordion("Command line · save and load settings", open=False, elem_id="train-tools"):
                with gr.Row():
                    show_cmd = gr.Button("Show the command line", elem_id="train-show-command")
                    save_settings = gr.DownloadButton("Save settings", elem_id="train-save-settings")
                    load_settings = gr.UploadButton(
                        "Load settings", file_types=[".json"], type="filepath", elem_id="train-load-settings"
                    )
                command = gr.Code(label="peftlab train …", language="shell", elem_id="train-command", interactive=False)
        with gr.Column(scale=6, min_width=380):
            status, progress, bar, params, plot = _progress_outputs()
    tab.inputs, tab.runs_dir = inputs, Path(runs_dir)
    # this browser's owner id, in its local storage (a reload keeps it); the secret only makes it opaque there
    tab.owner = gr.BrowserState(
        "", storage_key="peftlab-owner", secret=os.environ.get("PEFTLAB_SECRET") or f"peftlab:{tab.runs_dir.resolve()}"
    )
    run_state = gr.State("")  # the run folder this page follows
    seen_state = gr.State(-1)  # events already drawn (skip redrawing an unchanged plot)
    timer = gr.Timer(POLL_SECONDS, active=False)
    outs = [run_state, seen_state, status, progress, params, plot, timer, start, stop, resume, bar]
    form = {
        tab.method,
        inputs["base"],
        inputs["dataset"],
        inputs["upload"],
        tab.owner,
        tab.run_name,
        *tab.train_widgets,
        *(w for ws in tab.forms.values() for w in ws),
    }

    tab.method.change(tab.on_method, tab.method, [method_info, lr, *tab.groups.values()])
    for source in (inputs["dataset"], inputs["upload"]):
        source.change(
            on_dataset, [inputs["dataset"], inputs["upload"]], [inputs["dataset_info"], inputs["preview"], start]
        )
    start.click(tab.on_start, form, [*outs, tab.owner], concurrency_limit=1, show_progress="hidden")
    timer.tick(tab.on_poll, [run_state, seen_state, tab.owner], outs, show_progress="hidden")
    stop.click(tab.on_stopping, None, [status, stop], show_progress="hidden").then(
        tab.on_stop, [run_state, tab.owner], outs
    )
    resume.click(tab.on_resume, [run_state, tab.owner], outs, concurrency_limit=1)
    show_cmd.click(tab.on_command, form, command)
    save_settings.click(tab.on_save_settings, form, save_settings)
    load_settings.upload(tab.on_load_settings, load_settings, tab.form_widgets)
    demo.load(tab.on_load, tab.owner, [*outs, tab.owner, *tab.form_widgets], show_progress="hidden")
    return tab


__all__ = [
    "TrainTab",
    "build",
    "capability_text",
    "command_line",
    "hub_env",
    "preview_frame",
    "progress_bar",
    "upload_text",
    "user_owner",
]
