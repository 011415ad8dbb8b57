"""peftlab web app: ``python app.py``.

Environment: PEFTLAB_HOST / PEFTLAB_PORT, else GRADIO_SERVER_NAME / GRADIO_SERVER_PORT, else 127.0.0.1:7860;
PEFTLAB_RUNS (where jobs run; ./runs); PEFTLAB_SHARE_JOBS (1: every browser sees every job and adapter; 0: each its
own; unset: shared when served on this machine alone, apart on a network address or in a Space).
"""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no telemetry calls

from peftlab.webui import launch  # noqa: E402

if __name__ == "__main__":
    launch()  # builds the app on PEFTLAB_RUNS and serves it (see above)
