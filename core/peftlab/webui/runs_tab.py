"""The Runs tab: every past run of this session (all runs when jobs are shared) with method, dataset, steps, losses
and status; tick several to overlay their loss curves; open one to chat with it, push it, or delete it.

The handlers only call ``peftlab.runs`` (what a script would call) and return widget updates; tests call them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import pandas as pd

from .. import runs
from ..errors import PeftlabError
from .adapters import adapter_choices
from .owners import page_owner, viewer
from .plots import series_chart

HELP = (
    "Every training run of this browser session (the app's runs folder), newest first. Tick runs to overlay their "
    "loss curves; pick one to **chat** with its adapter, **push** it to the Hub, or **delete** it."
)
PLOT_COLUMNS = ["step", "loss", "run"]
PLOT_DTYPES = {"step": "int64", "loss": "float64", "run": "object"}


def curves_frame(infos: list[runs.RunInfo]) -> pd.DataFrame:
    """One row per (run, step): the training loss curves of ``infos``, for one plot coloured by run."""
    rows = [{"step": s, "loss": loss, "run": i.name} for i in infos for s, loss in i.curve]
    return pd.DataFrame(rows, columns=PLOT_COLUMNS).astype(PLOT_DTYPES)


def table_frame(infos: list[runs.RunInfo]) -> pd.DataFrame:
    return pd.DataFrame([i.row() for i in infos], columns=runs.COLUMNS)


@dataclass
class RunsTab:
    runs_dir: Path
    has_hub: bool = False
    widgets: dict = field(default_factory=dict)

    def connect_push(self, push_adapter) -> None:
        """Show **Push to the Hub** and make it select the run's adapter in the Hub tab's ``push_adapter``."""
        w = self.widgets
        self.has_hub = True
        w["push"].visible = True
        w["push"].click(self.on_push, [w["chosen"], w["owner"]], [push_adapter, w["tabs"], w["status"]])

    def _infos(self, owner: str | None) -> list[runs.RunInfo]:
        return runs.list_runs(self.runs_dir, owner or "")

    def on_refresh(
        self,
        ticked: list[str] | None,
        chosen: str | None,
        owner: str | None = None,
        profile: gr.OAuthProfile | None = None,
    ) -> tuple:
        """Table, the overlay's choices and plot, and the run picker, from what is on disk now. ``owner``: the
        browser's id; a Hugging Face login (``profile``) owns its runs instead, as in the Train tab."""
        owner = page_owner(owner, profile)
        infos = self._infos(owner)
        names = [i.name for i in infos]
        ticked = [n for n in (ticked or []) if n in names] or names[:3]
        chosen = chosen if chosen in names else (names[0] if names else None)
        shown = [i for i in infos if i.name in ticked]
        empty = "" if infos else "No runs yet: train one in the **Train** tab."
        return (
            table_frame(infos),
            gr.CheckboxGroup(choices=names, value=ticked),
            series_chart(curves_frame(shown), "step", "loss", "run", "Training loss") if shown else None,
            gr.Dropdown(choices=names, value=chosen),
            empty,
        )

    def on_overlay(self, ticked: list[str] | None, owner: str | None = None, profile: gr.OAuthProfile | None = None):
        owner = page_owner(owner, profile)
        infos = [i for i in self._infos(owner) if i.name in (ticked or [])]
        return series_chart(curves_frame(infos), "step", "loss", "run", "Training loss") if infos else None

    def on_details(self, chosen: str | None, owner: str | None = None, profile: gr.OAuthProfile | None = None) -> str:
        owner = page_owner(owner, profile)
        if not chosen:
            return ""
        try:
            info = runs.find_run(self.runs_dir, chosen, owner or "")
        except PeftlabError as e:
            return f"**{e}**"
        where = f"`{info.adapter}`" if info.adapter else "none saved yet"
        return (
            f"**{info.name}**: {info.method} on `{info.dataset}`, {info.steps} step(s), status **{info.status}**. "
            f"Adapter: {where}."
        )

    def on_chat(self, chosen: str | None, owner: str | None = None, profile: gr.OAuthProfile | None = None) -> tuple:
        """Select the run's adapter in the Chat tab's picker (which loads it) and switch to that tab; the picker
        offers what this page may see (``viewer``), as its own Refresh does."""
        adapter = self._adapter(chosen, page_owner(owner, profile))
        if adapter is None:
            return gr.skip(), gr.skip(), gr.skip(), f"**Run {chosen!r} has no saved adapter yet.**"
        choices = adapter_choices(self.runs_dir, owners=viewer(owner, profile))
        return gr.Dropdown(choices=choices, value=str(adapter)), "", gr.Tabs(selected="chat"), ""

    def on_push(self, chosen: str | None, owner: str | None = None, profile: gr.OAuthProfile | None = None) -> tuple:
        """Select the run's adapter in the Hub tab's push form and switch to that tab (offering this page's own)."""
        adapter = self._adapter(chosen, page_owner(owner, profile))
        if adapter is None:
            return gr.skip(), gr.skip(), f"**Run {chosen!r} has no saved adapter yet.**"
        choices = adapter_choices(self.runs_dir, owners=viewer(owner, profile))
        return gr.Dropdown(choices=choices, value=str(adapter)), gr.Tabs(selected="hub"), ""

    def on_delete(
        self, chosen: str | None, confirmed: bool, owner: str | None = None, profile: gr.OAuthProfile | None = None
    ) -> tuple[str, bool]:
        owner = page_owner(owner, profile)
        if not chosen:
            return "Pick a run first.", confirmed
        if not confirmed:
            return f"Tick **I am sure** to delete run **{chosen}** and its adapter.", confirmed
        try:
            runs.delete_run(self.runs_dir, chosen, owner or "")
        except (PeftlabError, OSError) as e:
            return f"**Cannot delete {chosen}:** {e}", False
        return f"Deleted run **{chosen}**.", False

    def _adapter(self, chosen: str | None, owner: str | None) -> Path | None:
        if not chosen:
            return None
        try:
            return runs.find_run(self.runs_dir, chosen, owner or "").adapter
        except PeftlabError:
            return None


def build(runs_dir: Path, owner, chat_adapter, chat_path, tabs: gr.Tabs, tab: gr.Tab) -> RunsTab:
    """The tab's widgets and events. ``owner``: the Train tab's browser state; ``chat_*``: the Chat tab's picker;
    the Hub tab, built after this one, is joined by ``connect_push``."""
    rt = RunsTab(Path(runs_dir))
    gr.Markdown(HELP)
    empty = gr.Markdown("", elem_id="runs-empty")
    table = gr.Dataframe(headers=runs.COLUMNS, interactive=False, wrap=True, elem_id="runs-table", show_search="search")
    with gr.Row(equal_height=False):
        with gr.Column(scale=6, min_width=360):
            ticked = gr.CheckboxGroup(label="Overlay loss curves", choices=[], elem_id="runs-overlay")
            plot = gr.Plot(label="Training loss", elem_id="runs-plot")
        with gr.Column(scale=4, min_width=300):
            chosen = gr.Dropdown(label="Run", choices=[], elem_id="runs-chosen")
            details = gr.Markdown("", elem_id="runs-details")
            with gr.Row():
                chat = gr.Button("Chat with it", elem_id="runs-chat")
                push = gr.Button("Push to the Hub", elem_id="runs-push", visible=False)
                refresh = gr.Button("Refresh", elem_id="runs-refresh")
            with gr.Row():
                sure = gr.Checkbox(label="I am sure", value=False, elem_id="runs-sure")
                delete = gr.Button("Delete run", variant="stop", elem_id="runs-delete")
            status = gr.Markdown("", elem_id="runs-status")

    listing = dict(fn=rt.on_refresh, inputs=[ticked, chosen, owner], outputs=[table, ticked, plot, chosen, empty])
    tab.select(**listing)
    refresh.click(**listing)
    ticked.input(rt.on_overlay, [ticked, owner], plot)
    chosen.change(rt.on_details, [chosen, owner], details)
    chat.click(rt.on_chat, [chosen, owner], [chat_adapter, chat_path, tabs, status])
    delete.click(rt.on_delete, [chosen, sure, owner], [status, sure]).then(**listing)
    rt.widgets = {"push": push, "chosen": chosen, "owner": owner, "tabs": tabs, "status": status}
    return rt


__all__ = ["RunsTab", "build", "curves_frame", "table_frame"]
