"""The Gradio web app (the only part of peftlab that imports gradio): ``build_app(runs_dir)`` and ``launch``."""

from .app import build_app, launch

__all__ = ["build_app", "launch"]
