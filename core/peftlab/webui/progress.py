"""What the Train tab says about a job: status, a progress line, trainable parameters (plain text, no widgets)."""

from __future__ import annotations

from dataclasses import dataclass

from ..jobs import RUNNING, Job

IDLE = "No job running. Pick a dataset and a method, then press **Start**."
STOPPING = "the trainer finishes its step, then saves a checkpoint and the adapter."


@dataclass
class JobView:
    status: str  # markdown
    progress: str  # one line: step / total, loss, tokens/s, ETA
    params: str  # trainable parameter count and share
    running: bool


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    return (
        f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else f"{seconds // 60}:{seconds % 60:02d}"
    )


def _last(events: list[dict], kind: str) -> dict | None:
    return next((e for e in reversed(events) if e.get("event") == kind), None)


def progress_line(events: list[dict]) -> str:
    start, step, ev = _last(events, "start"), _last(events, "step"), _last(events, "eval")
    if start is None:
        status = _last(events, "status")
        return f"starting: {status['message']}…" if status else "starting…"
    total = start.get("steps", "?")
    if step is None:
        return f"step 0 / {total} · measuring the base model's eval loss…" if ev is None else f"step 0 / {total}"
    parts = [f"step {step['step']} / {total}", f"loss {step['loss']:.4f}"]
    if ev is not None:
        parts.append(f"eval loss {ev['eval_loss']:.4f}")
    parts.append(f"{step['tokens_per_s']:.0f} tokens/s")
    if not any(e.get("event") in ("done", "stopped", "error") for e in events[-3:]):
        parts.append(f"ETA {duration(step.get('eta_s'))}")  # only while it trains
    return " · ".join(parts)


def params_line(events: list[dict]) -> str:
    start = _last(events, "start")
    if start is None:
        return ""
    return (
        f"Trainable parameters: **{start['trainable']:,}** of {start['total']:,} "
        f"(**{start['percent']:.3f} %**) · learning rate {start.get('learning_rate', 0):.2g} · "
        f"{start.get('train_rows', '?')} training rows"
    )


def job_view(job: Job | None) -> JobView:
    if job is None:
        return JobView(IDLE, "", "", False)
    events = job.events()
    name = f"`{job.name}`"
    if job.status == RUNNING and job.stop_requested:
        status = f"**Stopping** {name}: {STOPPING}"
    elif job.status == RUNNING:
        status = f"**Running** {name} ({job.method}, pid {job.pid}). Reloading the page reattaches to it."
    elif job.status == "done":
        status = f"**Done** {name}: {job.message}. Try it in the **Chat** tab."
    elif job.status == "stopped":
        status = f"**Stopped** {name}: {job.message}."
    else:
        tail = job.log_tail(12)
        status = f"**Failed** {name}: {job.message}" + (f"\n\n```\n{tail}\n```" if tail else "")
    return JobView(status, progress_line(events), params_line(events), job.status == RUNNING)
