"""Past training runs under a runs folder: what each was (method, dataset, steps), how it went (losses, status), and
deleting one. The web app's Runs tab reads these; so can a script.

A run is a folder holding the trainer's ``progress.jsonl`` (``peftlab train --output RUN``) and, once saved,
``adapter/``. Runs the app started also have ``job.json`` (status, owner); CLI runs have none and are settled from
their events alone. A trainer holds its run folder's lock file (``train.LOCK_FILE``) while it trains, so a run
whose lock is held is ``running`` (it cannot be deleted) and one without a final event whose lock is free is
``interrupted``. A run written before trainers locked their folder has no lock file: there, one without a final
event whose progress file changed in the last ``CLI_ACTIVE_S`` seconds is taken to be training still."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import jobs
from .errors import PeftlabError
from .io import CONFIG_FILE, META_FILE, RUN_ADAPTER_DIR
from .train import is_training, read_progress

PROGRESS = jobs.PROGRESS_FILE
CLI_ACTIVE_S = 600.0  # a CLI run (no job.json) that wrote progress this recently, and has not ended, is running


class RunError(PeftlabError):
    """A run cannot be found, seen by this session, or deleted."""


@dataclass
class RunInfo:
    """One run, as the Runs table shows it."""

    name: str
    path: Path
    method: str = "?"
    dataset: str = "?"
    status: str = "?"
    steps: int = 0  # steps done
    max_steps: int | None = None
    loss: float | None = None  # the last training step's loss
    eval_loss: float | None = None  # the last held-out loss
    eval_loss_before: float | None = None
    started: float | None = None
    owner: str | None = None
    curve: list[tuple[int, float]] = field(default_factory=list)  # (step, training loss)
    eval_curve: list[tuple[int, float]] = field(default_factory=list)  # (step, eval loss)

    @property
    def adapter(self) -> Path | None:
        folder = self.path / RUN_ADAPTER_DIR
        return folder if (folder / CONFIG_FILE).exists() else None

    def row(self) -> list:
        """The table row: run, method, dataset, steps, loss, eval loss (before → after), status, adapter."""

        def fmt(x: float | None) -> str:
            return "" if x is None or not math.isfinite(x) else f"{x:.4f}"

        steps = f"{self.steps}/{self.max_steps}" if self.max_steps else str(self.steps)
        ev = fmt(self.eval_loss)
        if self.eval_loss_before is not None and ev:
            ev = f"{fmt(self.eval_loss_before)} → {ev}"
        return [
            self.name,
            self.method,
            self.dataset,
            steps,
            fmt(self.loss),
            ev,
            self.status,
            "yes" if self.adapter else "",
        ]


COLUMNS = ["run", "method", "dataset", "steps", "loss", "eval loss", "status", "adapter"]


def _dataset_of(events: list[dict], path: Path) -> str:
    try:
        meta = json.loads((path / RUN_ADAPTER_DIR / META_FILE).read_text())
        return str((meta.get("card") or {}).get("dataset") or "?")
    except (OSError, json.JSONDecodeError):
        pass
    start = next((e for e in events if e.get("event") == "start"), {})
    return str(start.get("dataset") or "?")


def _status_of(events: list[dict], path: Path) -> str:
    training = is_training(path)
    if training:  # a trainer holds the folder (the CLI's, or a --resume after an earlier final event)
        return jobs.RUNNING
    kinds = [e.get("event") for e in events]
    if "done" in kinds:
        return "done"
    if "error" in kinds:
        return "failed"
    if "stopped" in kinds:
        return "stopped"
    try:  # no final event and no lock file (a run from before trainers locked their folder): its age decides
        if training is None and time.time() - (path / PROGRESS).stat().st_mtime < CLI_ACTIVE_S:
            return jobs.RUNNING
    except OSError:
        pass
    return "interrupted" if kinds else "empty"


def run_info(path: str | os.PathLike) -> RunInfo:
    """What ``path`` (a run folder) holds."""
    path = Path(path)
    events = read_progress(path) if (path / PROGRESS).exists() else []
    info = RunInfo(path.name, path)
    start = next((e for e in reversed(events) if e.get("event") == "start"), None)
    if start:
        info.method = str(start.get("method") or "?")
        info.max_steps = start.get("steps")
    curve = {e["step"]: e["loss"] for e in events if e.get("event") == "step" and "loss" in e}
    info.curve = sorted(curve.items())
    evals = {e["step"]: e["eval_loss"] for e in events if e.get("event") == "eval" and e.get("eval_loss") is not None}
    info.eval_curve = sorted(evals.items())
    info.steps = max([s for s, _ in info.curve], default=0)
    info.loss = info.curve[-1][1] if info.curve else None
    info.eval_loss = info.eval_curve[-1][1] if info.eval_curve else None
    info.eval_loss_before = evals.get(0) if info.eval_curve and info.eval_curve[-1][0] != 0 else None
    info.started = events[0].get("time") if events else None
    info.dataset = _dataset_of(events, path)
    info.status = _status_of(events, path)
    try:
        job = jobs.Job.load(path).refresh()
    except jobs.JobError:
        job = None
    if job is not None:
        info.status, info.owner, info.method = job.status, job.owner, job.method or info.method
        info.started = info.started or job.started
    return info


def list_runs(runs_dir: str | os.PathLike, owner: str | None = None) -> list[RunInfo]:
    """Every run under ``runs_dir`` that ``owner`` may see (``jobs.visible``; ``None``: all), newest first."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if not p.name.startswith(".")  # a run being deleted (``.<name>.deleting``) or another hidden folder
        and p.is_dir()
        and ((p / PROGRESS).exists() or (p / jobs.JOB_FILE).exists())
    ]
    out = []
    for p in found:
        info = run_info(p)
        if owner is None or info.owner is None or info.owner == owner or jobs.shared_jobs():
            out.append(info)
    return sorted(out, key=lambda r: (r.started or 0.0, r.name), reverse=True)


def find_run(runs_dir: str | os.PathLike, name: str, owner: str | None = None) -> RunInfo:
    """The run called ``name`` that ``owner`` may see; a clear error otherwise."""
    for info in list_runs(runs_dir, owner):
        if info.name == name:
            return info
    raise RunError(f"no run named {name!r} under {runs_dir}")


def delete_run(runs_dir: str | os.PathLike, name: str, owner: str | None = None) -> Path:
    """Delete the run ``name`` (its folder: adapter, checkpoints, logs). A running or queued job is refused: stop it
    first; so is any run a trainer holds (a CLI run, a CLI ``--resume`` of an app's run). Returns the deleted
    folder.

    The status is read and the folder moved aside under the jobs' scheduling lock, so a queued job cannot start in
    it, nor a resume begin, between the check and the move."""
    with jobs._scheduling(Path(runs_dir)):
        info = find_run(runs_dir, name, owner)
        status = jobs.RUNNING if is_training(info.path) else info.status  # a job's status, or its trainer's lock
        if status in (jobs.RUNNING, jobs.QUEUED):
            raise RunError(f"run {name!r} is {status}: stop it before deleting it")
        root = Path(runs_dir).resolve()
        target = info.path.resolve()
        if target.parent != root:  # a symlinked run pointing elsewhere is not ours to delete
            raise RunError(f"run {name!r} is not a folder inside {runs_dir}")
        trash = target.with_name(f".{target.name}.deleting")
        os.replace(target, trash)  # gone from every listing at once; a crash mid-delete leaves only the hidden folder
    shutil.rmtree(trash, ignore_errors=True)
    return target


__all__ = ["COLUMNS", "RunError", "RunInfo", "delete_run", "find_run", "list_runs", "run_info"]
