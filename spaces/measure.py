"""How long the app's default training takes here: ``python spaces/measure.py [STEPS] [METHOD]``.

Starts the job exactly as the Train tab does with its defaults (``jobs.train_command``: SmolLM2-135M-Instruct,
``capitals-json``, the method's defaults, batch 8, max length 256, eval of 64 rows at the start and the end), for
STEPS optimizer steps (default 20) instead of the form's 100, then reads the trainer's progress events: the time to
load the model, the evals, the steady step rate (from step 2 on), and the default 100-step run extrapolated. Run it
on a machine like the Space's hardware (a free CPU Space: 2 vCPU); the figures go in spaces/README.md.

On a shared machine wall times say little (other processes take the cores), so it also samples the training
process's CPU time (``/proc``): CPU-seconds per step, at ``--threads`` (default: torch's), are what a step costs
whatever else runs. ``PEFTLAB_MEASURE_THREADS=1`` runs the trainer on one thread (no OpenMP spin-waiting inflates its
CPU time under load): a dedicated 2-vCPU machine takes between half and all of those seconds per step.
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


def peak_rss_gb(pid: int) -> float | None:
    """The peak resident memory of process ``pid`` so far (``VmHWM``), in GB; None once it is gone."""
    try:
        line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None
    return int(line.split()[1]) / 1024**2


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` so far (Linux ``/proc``), None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(steps: int = 20, method: str = "lora") -> dict:
    threads = os.environ.get("PEFTLAB_MEASURE_THREADS")
    settings = {"dataset": "capitals-json", "max_steps": steps, **({"threads": threads} if threads else {})}
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **({"OMP_NUM_THREADS": threads} if threads else {})}
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        argv = train_command(method, settings, {}, run)
        t0 = time.time()
        samples = []  # (wall, cpu seconds of the trainer)
        peak = 0.0
        with open(Path(tmp) / "log", "wb") as log:
            child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
            while child.poll() is None:
                cpu, rss = cpu_seconds(child.pid), peak_rss_gb(child.pid)
                if cpu is not None:
                    samples.append((time.time(), cpu))
                peak = max(peak, rss or 0.0)
                time.sleep(0.25)
        total = time.time() - t0
        if child.returncode != 0:
            sys.exit((Path(tmp) / "log").read_text()[-3000:])
        events = read_progress(run)

    def cpu_at(when: float) -> float:
        return min(samples, key=lambda s: abs(s[0] - when))[1]

    first = next(e for e in events if e["event"] == "status")
    start = next(e for e in events if e["event"] == "start")
    evals = [e for e in events if e["event"] == "eval"]
    step_events = [e for e in events if e["event"] == "step"]
    end = next(e for e in events if e["event"] == "done")
    a, b = step_events[0]["time"], step_events[-1]["time"]
    n = max(1, len(step_events) - 1)
    steady, steady_cpu = (b - a) / n, (cpu_at(b) - cpu_at(a)) / n
    overhead = total - (b - a)
    return {
        "method": method,
        "steps": steps,
        "threads": threads or "torch's default",
        "process start to model loaded (s)": round(start["time"] - t0, 1),
        "of which before the trainer's first event (s)": round(first["time"] - t0, 1),
        "first eval, 64 rows (s)": round(evals[0]["time"] - start["time"], 1),
        "first eval, CPU-seconds": round(cpu_at(evals[0]["time"]) - cpu_at(start["time"]), 1),
        "seconds per step (wall, steady)": round(steady, 2),
        "CPU-seconds per step (steady)": round(steady_cpu, 2),
        "tokens per second (last step, wall)": round(step_events[-1].get("tokens_per_s", 0)),
        "wall time of this run (s)": round(total, 1),
        f"the form's default {FORM_STEPS}-step run (wall s, extrapolated)": round(overhead + steady * (FORM_STEPS - 1)),
        "final eval loss": round(end.get("eval_loss", float("nan")), 3),
        "peak memory of the trainer (GB)": round(peak, 2),
        "load average (1 min) after": os.getloadavg()[0],
        "cpus": os.cpu_count(),
    }


if __name__ == "__main__":
    args = sys.argv[1:]
    print(json.dumps(measure(int(args[0]) if args else 20, args[1] if len(args) > 1 else "lora"), indent=2))
