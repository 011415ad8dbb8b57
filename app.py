"""peftlab web app: ``python app.py``.

Environment: PEFTLAB_HOST (default 127.0.0.1), PEFTLAB_PORT (7860), PEFTLAB_RUNS (where jobs run; ./runs).
"""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no telemetry calls

from peftlab.webui import launch  # noqa: E402

if __name__ == "__main__":
    launch()  # builds the app on PEFTLAB_RUNS and serves it on PEFTLAB_HOST:PEFTLAB_PORT
