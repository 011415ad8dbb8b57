"""The peftlab web app: a Train tab, a Chat tab and (with ``peftlab-hub``) a Hub tab over the same functions the CLI
uses."""

from __future__ import annotations

import os
from pathlib import Path

import gradio as gr

from . import chat_tab, train_tab
from .adapters import HAS_HUB
from .engine import ChatEngine

CSS_FILE = Path(__file__).with_name("style.css")
INTRO = (
    "# peftlab\nParameter-efficient fine-tuning where every method is a plugin. **Train** an adapter on "
    "a built-in or uploaded dataset (it runs in a background process: reload the page any time), then "
    "**Chat** with it next to the base model" + (", or share it on the **Hub**." if HAS_HUB else ".")
)


def theme() -> gr.themes.Base:
    system = ["ui-sans-serif", "system-ui", "sans-serif"]  # no web fonts: the app works offline
    return gr.themes.Soft(primary_hue="indigo", font=system, font_mono=["ui-monospace", "monospace"])


def build_app(runs_dir: str | os.PathLike = "runs") -> gr.Blocks:
    """Build the Blocks app; training jobs and their adapters live under ``runs_dir``."""
    runs = Path(runs_dir)
    runs.mkdir(parents=True, exist_ok=True)
    engine = ChatEngine()
    with gr.Blocks(title="peftlab") as demo:
        gr.Markdown(INTRO, elem_id="peftlab-title")
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("Train", id="train", elem_id="tab-train"):
                demo.peftlab_train = train_tab.build(demo, runs)
            with gr.Tab("Chat", id="chat", elem_id="tab-chat") as chat:
                picker = chat_tab.build(runs, engine, chat)
            if HAS_HUB:  # core never needs the hub; the app offers it when peftlab-hub is installed
                from . import hub_tab

                with gr.Tab("Hub", id="hub", elem_id="tab-hub") as hub:
                    demo.peftlab_hub = hub_tab.build(runs, picker, tabs, hub)
    demo.peftlab_engine = engine
    return demo


def launch(demo: gr.Blocks | None = None, host: str | None = None, port: int | None = None, **kwargs) -> None:
    """Serve the app. Unset arguments come from PEFTLAB_RUNS (./runs), PEFTLAB_HOST (127.0.0.1) and
    PEFTLAB_PORT (7860)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline by default: no telemetry calls
    demo = demo or build_app(os.environ.get("PEFTLAB_RUNS", "runs"))
    demo.queue(default_concurrency_limit=4).launch(
        server_name=host or os.environ.get("PEFTLAB_HOST", "127.0.0.1"),
        server_port=port or int(os.environ.get("PEFTLAB_PORT", "7860")),
        theme=theme(),
        css_paths=[CSS_FILE],
        show_error=True,
        footer_links=["settings"],
        **kwargs,
    )
