"""How long the app's default training takes here: ``python spaces/measure.py [STEPS] [METHOD]``.

Starts the job exactly as the Train tab does with its defaults (``jobs.train_command``: SmolLM2-135M-Instruct,
``capitals-json``, the method's defaults, batch 8, max length 256, eval of 64 rows at the start and the end), for
STEPS optimizer steps (default 20) instead of the form's 100, then reads the trainer's progress events: the time to
load the model, the evals, the steady step rate (from step 2 on), and the default 100-step run extrapolated. Run it
on a machine like the Space's hardware (a free CPU Space: 2 vCPU); the figures go in spaces/README.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from peftlab.jobs import train_command
from peftlab.train import TrainArgs, read_progress

FORM_STEPS = TrainArgs.max_steps  # the Train tab's default


def measure(steps: int = 20, method: str = "lora") -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        argv = train_command(method, {"dataset": "capitals-json", "max_steps": steps}, {}, run)
        t0 = time.time()
        done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "0"})
        total = time.time() - t0
        if done.returncode != 0:
            sys.exit(done.stdout[-3000:] + done.stderr[-3000:])
        events = read_progress(run)
    first = next(e for e in events if e["event"] == "status")
    start = next(e for e in events if e["event"] == "start")
    evals = [e for e in events if e["event"] == "eval"]
    step_events = [e for e in events if e["event"] == "step"]
    end = next(e for e in events if e["event"] == "done")
    steady = (step_events[-1]["time"] - step_events[0]["time"]) / max(1, len(step_events) - 1)
    first_eval = evals[0]["time"] - start["time"]
    last_eval = evals[-1]["time"] - step_events[-1]["time"]
    overhead = total - (step_events[-1]["time"] - step_events[0]["time"])
    return {
        "method": method,
        "steps": steps,
        "process start to model loaded (s)": round(start["time"] - t0, 1),
        "of which before the trainer's first event (s)": round(first["time"] - t0, 1),
        "eval of 64 rows (s)": round((first_eval + last_eval) / 2, 1),
        "seconds per step (steady)": round(steady, 2),
        "steps per second": round(1 / steady, 2),
        "tokens per second (last step)": round(step_events[-1].get("tokens_per_s", 0)),
        "wall time of this run (s)": round(total, 1),
        f"the form's default {FORM_STEPS}-step run (s, extrapolated)": round(overhead + steady * (FORM_STEPS - 1), 0),
        "final eval loss": round(end.get("eval_loss", float("nan")), 3),
        "load average (1 min) after": os.getloadavg()[0],
        "cpus": os.cpu_count(),
    }


if __name__ == "__main__":
    args = sys.argv[1:]
    print(json.dumps(measure(int(args[0]) if args else 20, args[1] if len(args) > 1 else "lora"), indent=2))
