"""The peftlab web app: a Train tab, a Chat tab and (with ``peftlab-hub``) a Hub tab over the same functions the CLI
uses."""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path

import gradio as gr

from .. import jobs
from ..errors import PeftlabError
from . import chat_tab, compare_tab, eval_tab, runs_tab, train_tab
from .adapters import HAS_HUB
from .engine import ChatEngine

CSS_FILE = Path(__file__).with_name("style.css")
CHAT_GPU_SECONDS = 60  # what a ZeroGPU call of the chat may take (a reply of the longest length, with room)
INTRO = (
    "# peftlab\nParameter-efficient fine-tuning where every method is a plugin. **Train** an adapter on "
    "a built-in or uploaded dataset (it runs in a background process: reload the page any time), then "
    "**Chat** with it next to the base model, **Evaluate** adapters side by side, **Compare** methods on your "
    "data, and look back at your **Runs**"
    + ("; share adapters on the **Hub** and **Compose** them into new ones." if HAS_HUB else ".")
)


def theme() -> gr.themes.Base:
    system = ["ui-sans-serif", "system-ui", "sans-serif"]  # no web fonts: the app works offline
    return gr.themes.Soft(primary_hue="indigo", font=system, font_mono=["ui-monospace", "monospace"])


def gpu(fn: Callable | None = None, *, duration: int | None = None) -> Callable:
    """``@spaces.GPU`` when the ``spaces`` package is importable (a ZeroGPU Space lends a GPU to each call of ``fn``;
    on other hardware the package's decorator does nothing), else ``fn`` unchanged. ``duration``: seconds a call may
    hold the GPU (ZeroGPU's default when None). As ``@gpu`` or ``@gpu(duration=120)``."""
    if fn is None:
        return lambda f: gpu(f, duration=duration)
    decorator = getattr(_spaces(), "GPU", None)  # (a folder named spaces on sys.path is not the package)
    if not callable(decorator):
        return fn
    return decorator(fn) if duration is None else decorator(duration=duration)(fn)


def _spaces():
    """The ``spaces`` package (Hugging Face's ZeroGPU helper), or None when it is not installed."""
    if find_spec("spaces") is None:
        return None
    import spaces

    return spaces


def build_app(runs_dir: str | os.PathLike = "runs") -> gr.Blocks:
    """Build the Blocks app; training jobs and their adapters live under ``runs_dir``."""
    runs = Path(runs_dir)
    runs.mkdir(parents=True, exist_ok=True)
    engine = ChatEngine()
    # the chat's generation is the GPU work of this process (training runs in its own process): on ZeroGPU each
    # reply borrows the GPU for its length
    engine.stream = gpu(engine.stream, duration=CHAT_GPU_SECONDS)
    with gr.Blocks(title="peftlab") as demo:
        gr.Markdown(INTRO, elem_id="peftlab-title")
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("Train", id="train", elem_id="tab-train"):
                demo.peftlab_train = train = train_tab.build(demo, runs)
            with gr.Tab("Chat", id="chat", elem_id="tab-chat") as chat:
                picker = chat_tab.build(runs, engine, chat, owner=train.owner)
            with gr.Tab("Evaluate", id="evaluate", elem_id="tab-evaluate") as evaluate:
                demo.peftlab_eval = eval_tab.build(runs, evaluate, owner=train.owner)
            with gr.Tab("Compare", id="compare", elem_id="tab-compare"):
                demo.peftlab_compare = compare_tab.build(demo, runs, train.owner)
            with gr.Tab("Runs", id="runs", elem_id="tab-runs") as runs_page:
                demo.peftlab_runs = runs_tab.build(runs, train.owner, picker.adapter, picker.path, tabs, runs_page)
            if HAS_HUB:  # core never needs the hub; the app offers it when peftlab-hub is installed
                from . import compose_tab, hub_tab

                with gr.Tab("Hub", id="hub", elem_id="tab-hub") as hub:
                    demo.peftlab_hub = hub_tab.build(runs, picker, tabs, hub, owner=train.owner)
                    demo.peftlab_runs.connect_push(demo.peftlab_hub.push_adapter)
                with gr.Tab("Compose", id="compose", elem_id="tab-compose") as compose:
                    demo.peftlab_compose = compose_tab.build(runs, compose, owner=train.owner)
    demo.peftlab_engine = engine
    return demo


def server_address(host: str | None = None, port: int | str | None = None) -> tuple[str, int]:
    """Where to serve: the arguments, else ``PEFTLAB_HOST`` / ``PEFTLAB_PORT``, else ``GRADIO_SERVER_NAME`` /
    ``GRADIO_SERVER_PORT`` (what a Space, or a user of plain gradio, sets), else ``127.0.0.1:7860``."""
    host = host or os.environ.get("PEFTLAB_HOST") or os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1"
    for name, value in (("port", port), ("PEFTLAB_PORT", None), ("GRADIO_SERVER_PORT", None)):
        value = value if name == "port" else os.environ.get(name)
        if value in (None, ""):
            continue
        text = str(value).strip()
        if not text.isdigit() or not 0 < int(text) < 65536:
            raise PeftlabError(f"{name} must be a port number (1-65535), not {value!r}")
        return host, int(text)
    return host, 7860


def local_only(host: str) -> bool:
    """Whether ``host`` serves this machine alone (a loopback address): a single user's laptop."""
    return host in ("localhost", "::1") or host.startswith("127.")


def share_default(host: str) -> bool:
    """Whether sessions share jobs when ``PEFTLAB_SHARE_JOBS`` is unset: yes for one user on this machine, no in a
    Space (``SPACE_ID``) or on an address others can reach."""
    return local_only(host) and not os.environ.get("SPACE_ID")


def no_implicit_token() -> None:
    """Make huggingface_hub send no token it is not handed, in this process and the ones it starts: what the app
    fetches for a visitor (the Chat and Evaluate tabs' base models, a dataset) goes anonymously, never with this
    server's own ``HF_TOKEN`` or saved login. A token handed on purpose (a visitor's own, in the Hub tab) still goes;
    a visitor's training job gets theirs through ``jobs.child_environment``."""
    from huggingface_hub import constants

    os.environ["HF_HUB_DISABLE_IMPLICIT_TOKEN"] = "1"
    constants.HF_HUB_DISABLE_IMPLICIT_TOKEN = True  # read at import: the running process needs it set here


def launch(demo: gr.Blocks | None = None, host: str | None = None, port: int | None = None, **kwargs) -> None:
    """Serve the app. Unset arguments come from PEFTLAB_RUNS (./runs) and ``server_address`` (PEFTLAB_HOST /
    PEFTLAB_PORT, then GRADIO_SERVER_NAME / GRADIO_SERVER_PORT, then 127.0.0.1:7860). Sessions share jobs and
    adapters per ``PEFTLAB_SHARE_JOBS``, whose default this sets from ``share_default``; kept apart (a Space, a
    network address), the server's Hugging Face token is not lent to visitors (``no_implicit_token``)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline by default: no telemetry calls
    host, port = server_address(host, port)
    os.environ.setdefault("PEFTLAB_SHARE_JOBS", "1" if share_default(host) else "0")
    if not jobs.shared_jobs():  # (a bad value is refused now, not on a page's first poll)
        no_implicit_token()
    demo = demo or build_app(os.environ.get("PEFTLAB_RUNS", "runs"))
    demo.queue(default_concurrency_limit=4).launch(
        server_name=host,
        server_port=port,
        theme=theme(),
        css_paths=[CSS_FILE],
        show_error=True,
        footer_links=["settings"],
        **kwargs,
    )
