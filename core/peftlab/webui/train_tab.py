"""The Train tab: base model, dataset, method + its generated config form, trainer settings, Start / Stop, live
progress and loss curve. Training runs in a child process (``peftlab.jobs``); a timer polls its progress file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from .. import jobs
from ..data.rows import DatasetError, dataset_task
from ..data.sources import builtin_datasets, load_rows
from ..errors import PeftlabError
from ..plugins import MethodHandle, methods
from . import forms
from .plots import COLORS, loss_frame
from .progress import IDLE, STOPPING, job_view

POLL_SECONDS = 1.0
STOP_TIMEOUT = 120.0  # seconds the trainer gets to finish its step and save before it is killed


@dataclass
class TrainTab:
    """The tab's widgets (tests and the browser test find them by these and by ``elem_id``)."""

    method: gr.Dropdown
    forms: dict[str, list] = field(default_factory=dict)  # method → widgets, in config field order
    groups: dict[str, gr.Group] = field(default_factory=dict)
    specs: dict[str, list] = field(default_factory=dict)  # method → FieldSpecs
    train_widgets: list = field(default_factory=list)


def capability_text(m: MethodHandle) -> str:
    """What the method can do, in words (the capabilities drive what the app offers)."""
    c = m.capabilities
    lines = [f"**{m.name}** — {m.description or 'no description'} (plugin `{m.plugin}`)", ""]
    lines.append("- mergeable: yes" if c.mergeable else f"- mergeable: no — {c.merge_note or 'the method says so'}")
    lines.append("- stackable with other adapters: yes" if c.stackable else
                 f"- stackable: no — {c.stack_note or 'the method says so'}")
    if c.kv_cache:
        lines.append("- works through the KV cache (prefix keys/values)")
    if c.virtual_tokens:
        lines.append("- adds virtual tokens to the input")
    if c.needs_quantized_base:
        lines.append("- loads its own quantized base model")
    lines.append("- chat: adapted and base replies in one batched pass" if c.mixed_batch else
                 "- chat: adapted and base replies in two passes (no mixed batches)")
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
    return f"✓ uploaded file `{Path(path).name}`: {len(rows)} rows, task {dataset_task(rows)} (used instead of " \
           f"the built-in dataset; clear it to go back)"


def build(demo: gr.Blocks, runs_dir: Path) -> TrainTab:
    all_methods = methods()
    names = [m.name for m in all_methods]
    first = "lora" if "lora" in names else (names[0] if names else None)
    datasets = builtin_datasets()
    default_ds = "capitals-json" if "capitals-json" in datasets else next(iter(datasets), None)

    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=380):
            gr.Markdown("### 1 · Model and data")
            base = gr.Textbox(label="Base model", placeholder="empty = SmolLM2-135M-Instruct (offline)",
                              info="A Hub id or a local model folder", elem_id="train-base")
            dataset = gr.Dropdown(choices=list(datasets), value=default_ds, label="Built-in dataset",
                                  elem_id="train-dataset")
            upload = gr.File(label="…or upload a JSONL / CSV / Parquet file", file_types=[".jsonl", ".json", ".csv",
                             ".parquet"], height=150, elem_id="train-upload")
            dataset_info = gr.Markdown(dataset_text(default_ds, None), elem_id="train-dataset-info")

            gr.Markdown("### 2 · Method")
            method = gr.Dropdown(choices=names, value=first, label="Method",
                                 info="Every installed plugin's method; its settings appear below",
                                 elem_id="train-method")
            by_name = {m.name: m for m in all_methods}
            method_info = gr.Markdown(capability_text(by_name[first]) if first else "No method plugin installed.",
                                      elem_id="train-method-info")
            tab = TrainTab(method)
            for m in all_methods:
                specs = m.config_class.fields()
                with gr.Group(visible=m.name == first, elem_id=f"method-form-{m.name}") as group:
                    widgets = []
                    for i in range(0, len(specs), 2):
                        with gr.Row():
                            widgets += [forms.field_component(s, f"cfg-{m.name}-{s.name}") for s in specs[i:i + 2]]
                tab.forms[m.name], tab.groups[m.name], tab.specs[m.name] = widgets, group, specs

            gr.Markdown("### 3 · Training")
            tspecs = forms.train_fields()
            main = [s for s in tspecs if s.name in forms.MAIN_TRAIN_FIELDS]
            more = [s for s in tspecs if s.name not in forms.MAIN_TRAIN_FIELDS]
            widgets_by_name = {}
            with gr.Row():
                for s in main:
                    widgets_by_name[s.name] = forms.train_component(s)
            with gr.Accordion("More training settings", open=False, elem_id="train-more"):
                for i in range(0, len(more), 3):
                    with gr.Row():
                        for s in more[i:i + 3]:
                            widgets_by_name[s.name] = forms.train_component(s)
            tab.train_widgets = [widgets_by_name[s.name] for s in tspecs]
            if first:
                widgets_by_name["learning_rate"].placeholder = lr_hint(by_name[first])
            with gr.Row():
                start = gr.Button("Start training", variant="primary", elem_id="train-start")
                stop = gr.Button("Stop", variant="stop", interactive=False, elem_id="train-stop")

        with gr.Column(scale=6, min_width=380):
            gr.Markdown("### Progress")
            status = gr.Markdown(IDLE, elem_id="train-status")
            progress = gr.Markdown("", elem_id="train-progress")
            params = gr.Markdown("", elem_id="train-params")
            plot = gr.LinePlot(None, x="step", y="loss", color="series", title="Loss",
                               x_title="step", y_title="loss", height=320, elem_id="loss-plot",
                               color_map=COLORS)

    run_state = gr.State("")  # the run folder this page follows
    seen_state = gr.State(-1)  # events already drawn (skip redrawing an unchanged plot)
    timer = gr.Timer(POLL_SECONDS, active=False)
    groups = [tab.groups[n] for n in names]

    def on_method(name: str):
        m = by_name.get(name)
        return [capability_text(m) if m else "", gr.Textbox(placeholder=lr_hint(m) if m else ""),
                *[gr.Group(visible=n == name) for n in names]]

    method.change(on_method, method, [method_info, widgets_by_name["learning_rate"], *groups])
    dataset.change(dataset_text, [dataset, upload], dataset_info)
    upload.change(dataset_text, [dataset, upload], dataset_info)

    def outputs_for(job: jobs.Job | None, seen: int):
        """Values for [run_state, seen_state, status, progress, params, plot, timer, start, stop]."""
        view = job_view(job)
        events = job.events() if job else []
        frame = loss_frame(events)
        # never an empty frame: gradio's plot then fixes an empty colour domain and later lines have no stroke
        drawn = gr.skip() if len(events) == seen else (frame if len(frame) else None)
        return [str(job.run_dir) if job else "", len(events), view.status, view.progress, view.params, drawn,
                gr.Timer(active=view.running), gr.Button(interactive=not view.running),
                gr.Button(interactive=view.running and not job.stop_requested)]

    outs = [run_state, seen_state, status, progress, params, plot, timer, start, stop]
    form_inputs = {base, dataset, upload, method, *tab.train_widgets, *(w for ws in tab.forms.values() for w in ws)}

    def on_start(v: dict):
        name = v[method]
        if name not in by_name:
            raise gr.Error("Pick a method first.")
        flags = forms.changed_flags(tab.specs[name], [v[w] for w in tab.forms[name]])
        try:
            by_name[name].config_class.from_strings(flags)  # the CLI's own check, before a process starts
        except (PeftlabError, ValueError, TypeError) as e:
            raise gr.Error(f"{name} settings: {e}") from None
        data = v[upload] or v[dataset]
        if not data:
            raise gr.Error("Pick a built-in dataset or upload a file.")
        try:
            task = dataset_task(load_rows(data))
        except (PeftlabError, OSError) as e:
            raise gr.Error(f"Dataset: {e}") from None
        if task not in by_name[name].capabilities.task_types:
            raise gr.Error(f"{name} does not support {task} datasets")
        try:
            settings = forms.train_settings(forms.train_fields(), [v[w] for w in tab.train_widgets])
        except ValueError as e:
            raise gr.Error(f"Training settings: {e}") from None
        settings.update(dataset=data, base_model=(v[base] or "").strip() or None)
        try:
            job = jobs.start_job(runs_dir, name, settings, flags)
        except PeftlabError as e:
            raise gr.Error(str(e)) from None
        return outputs_for(job, -1)

    def on_poll(run_dir: str, seen: int):
        job = jobs.Job.load(run_dir).refresh() if run_dir and Path(run_dir, jobs.JOB_FILE).exists() else None
        return outputs_for(job, seen)

    def on_stop(run_dir: str):
        if not run_dir:
            return [gr.skip()] * 2 + ["Nothing to stop."] + [gr.skip()] * (len(outs) - 3)
        return outputs_for(jobs.stop(jobs.Job.load(run_dir), timeout=STOP_TIMEOUT), -1)

    def on_load():
        """A page (re)load reattaches to the job still running, if any (else leaves the page as it is, so a
        Start pressed before this ran is not undone)."""
        job = jobs.current_job(runs_dir)
        return outputs_for(job, -1) if job is not None else [gr.skip()] * len(outs)

    start.click(on_start, form_inputs, outs, concurrency_limit=1, show_progress="hidden")
    timer.tick(on_poll, [run_state, seen_state], outs, show_progress="hidden")
    stop.click(lambda: (f"**Stopping…** {STOPPING}", gr.Button(interactive=False)), None, [status, stop],
               show_progress="hidden").then(on_stop, run_state, outs)
    demo.load(on_load, None, outs, show_progress="hidden")
    return tab


__all__ = ["TrainTab", "build", "capability_text", "upload_text"]
