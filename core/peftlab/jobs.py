"""Training jobs in a child process: start, find again after a page reload, stop.

A job is ``python -m peftlab train ... --json --output RUNS/<run>`` in its own process group. Its folder
holds ``job.json`` (pid, command, status), ``train.log`` (the child's stdout and stderr) and what the trainer
writes: ``progress.jsonl``, ``checkpoints/``, ``adapter/``. Anything that can read the folder can follow the job
(``events()``), so a reloaded page, or a restarted app, reattaches with ``current_job(runs_dir)``.

At most ``max_jobs()`` jobs run at once (``PEFTLAB_MAX_JOBS``; default: one per CUDA GPU, one on a CPU). With
``start_job(..., queue=True)`` a further job waits as ``queued`` (``queue_place`` says its place) and starts when a
slot frees. A job may have an ``owner`` (the web app's browser, or ``hf:<user>`` for a Hugging Face login):
``list_jobs``, ``current_job``, ``stop`` and ``saved_adapters`` given an owner only see that owner's jobs (and jobs
without one), unless ``PEFTLAB_SHARE_JOBS=1``. Here, with the variable unset, owners are kept apart; the web app's
``launch`` sets the default it serves with (shared on a single-user laptop, apart in a Space or on the network).

When owners are kept apart, a job that has an owner (a visitor's) runs without this server's Hugging Face tokens
(``child_environment``): only a token its own ``env`` brings (the visitor's login) reaches the trainer. Token-like
variables of ``env`` are kept in this process's memory until the job starts, never in ``job.json``.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import PeftlabError
from .io import RUN_ADAPTER_DIR
from .schema import fields_of
from .train import PROGRESS_FILE, TrainArgs, read_progress

JOB_FILE = "job.json"
LOG_FILE = "train.log"
RUNNING = "running"
QUEUED = "queued"  # waiting for a free slot (``max_jobs``): no process yet
FINISHED = ("done", "stopped", "failed")  # the statuses a job ends in

_children: dict[int, subprocess.Popen] = {}  # jobs this process started: poll() reaps them (no zombies)
_settle_lock = threading.Lock()
_queue_lock = threading.Lock()  # starting jobs, in this process (a lock on the runs folder: across processes)
_schedulers: dict[Path, threading.Thread] = {}  # runs folder → the thread that starts its queued jobs
_schedulers_lock = threading.Lock()
QUEUE_POLL = 1.0  # seconds between the queue's looks for a free slot
HUB_TOKEN_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_TOKEN")  # what huggingface_hub reads a token from
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|API_?KEY", re.IGNORECASE)
_secrets: dict[
    Path, dict[str, str]
] = {}  # run folder → the token-like ``env`` of its job until it starts (memory only)
PID_START_SLACK = 60.0  # seconds a job's process may seem to start after ``job.started`` (clock steps, /proc rounding)


def max_jobs() -> int:
    """How many jobs may run at once: ``PEFTLAB_MAX_JOBS``, else the number of CUDA GPUs (at least one)."""
    value = os.environ.get("PEFTLAB_MAX_JOBS", "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise JobError(f"PEFTLAB_MAX_JOBS must be a positive integer, not {value!r}")
        return int(value)
    try:
        import torch

        return max(1, torch.cuda.device_count())
    except Exception:  # noqa: BLE001 (no usable torch.cuda: the CPU)
        return 1


SHARE_VALUES = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def shared_jobs() -> bool:
    """``PEFTLAB_SHARE_JOBS=1``: every session sees and may stop every job (and its adapter); ``0`` or unset: each
    owner sees its own. Any other value is refused (``JobError``), never silently read as one or the other."""
    value = os.environ.get("PEFTLAB_SHARE_JOBS", "").strip().lower()
    if value and value not in SHARE_VALUES:
        raise JobError(
            f"PEFTLAB_SHARE_JOBS must be 1 (share jobs between sessions) or 0 (keep them apart), not {value!r}"
        )
    return SHARE_VALUES.get(value, False)


def visible(job: Job, owner: str | None) -> bool:
    """Whether ``owner`` (a session; ``None`` = the API or CLI, which see everything) may see and stop ``job``."""
    return owner is None or job.owner is None or job.owner == owner or shared_jobs()


class JobError(PeftlabError):
    """A job cannot start (another one runs, bad settings) or cannot be stopped."""


@dataclass
class Job:
    """One training run: its folder and what ``job.json`` says about it."""

    run_dir: Path
    pid: int
    argv: list[str]
    method: str
    status: str = RUNNING
    started: float = field(default_factory=time.time)
    finished: float | None = None
    returncode: int | None = None
    message: str = ""
    stop_requested: float | None = None  # when stop() sent SIGTERM
    owner: str | None = None  # the session that started it (None: the API or CLI; every session sees it)
    queued: float | None = None  # when it was asked for (the queue's order)
    env: dict[str, str] = field(default_factory=dict)  # extra environment for the process (a queued job's)
    form: dict[str, Any] = field(default_factory=dict)  # what it was started with: method, settings, flags (text)

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def adapter_dir(self) -> Path:
        return self.run_dir / RUN_ADAPTER_DIR

    def events(self) -> list[dict]:
        """The trainer's progress events so far."""
        return read_progress(self.run_dir)

    def log_tail(self, lines: int = 20) -> str:
        file = self.run_dir / LOG_FILE
        if not file.exists():
            return ""
        return "\n".join(file.read_text(errors="replace").splitlines()[-lines:])

    def alive(self) -> bool:
        """Whether the training process still runs."""
        if self.pid <= 0:  # queued: no process yet
            return False
        child = _children.get(self.pid)
        if child is not None:
            return child.poll() is None
        return _pid_runs(self.pid, str(self.run_dir), self.started)

    def refresh(self) -> Job:
        """Settle the status of a job whose process has ended (and record it in ``job.json``); a queued job is
        read again (the queue may have started it)."""
        if self.status == QUEUED:
            try:
                self.__dict__.update(Job.load(self.run_dir).__dict__)
            except JobError:
                return self
        if self.status != RUNNING or self.alive():
            return self
        with _settle_lock:  # the page's poll and Stop may both see the end: one settles, the other reads it
            try:
                settled = Job.load(self.run_dir)
            except JobError:
                settled = self
            if settled.status != RUNNING:
                self.status, self.message, self.returncode, self.finished = (
                    settled.status,
                    settled.message,
                    settled.returncode,
                    settled.finished,
                )
                return self
            child = _children.pop(self.pid, None)
            self.returncode = child.returncode if child is not None else self.returncode
            self.finished = self.finished or time.time()
            self.stop_requested = settled.stop_requested or self.stop_requested  # Stop may have come since we loaded
            self.status, self.message = _outcome(self.events(), self.returncode, self.log_tail(), self.stop_requested)
            self.save()
        return self

    def save(self) -> None:
        data = {
            "pid": self.pid,
            "argv": self.argv,
            "method": self.method,
            "status": self.status,
            "started": self.started,
            "finished": self.finished,
            "returncode": self.returncode,
            "message": self.message,
            "stop_requested": self.stop_requested,
            "owner": self.owner,
            "queued": self.queued,
            "env": self.env,
            "form": self.form,
        }
        tmp = self.run_dir / f".{JOB_FILE}.{uuid.uuid4().hex[:8]}.tmp"  # concurrent writers never share one
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, self.run_dir / JOB_FILE)  # a reader never sees half a file

    @classmethod
    def load(cls, run_dir: str | os.PathLike) -> Job:
        run_dir = Path(run_dir)
        try:
            data = json.loads((run_dir / JOB_FILE).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise JobError(f"{run_dir}: no readable {JOB_FILE} ({e})") from None
        return cls(
            run_dir,
            int(data.get("pid") or 0),
            list(data.get("argv", [])),
            data.get("method", ""),
            data.get("status", RUNNING),
            data.get("started", 0.0),
            data.get("finished"),
            data.get("returncode"),
            data.get("message", ""),
            data.get("stop_requested"),
            data.get("owner"),
            data.get("queued"),
            dict(data.get("env") or {}),
            dict(data.get("form") or {}),
        )


def _pid_runs(pid: int, marker: str, started: float | None = None) -> bool:
    """A process we did not start: alive, not a zombie, and (where /proc exists) still our trainer: its command line
    names ``marker`` (the run folder) and it did not start after the job did (``started``), so a reused pid is not
    taken for the job, whoever owns it (a process of another user, which we may not signal, is read too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive but not ours to signal: /proc says whether it is the trainer
    proc = Path(f"/proc/{pid}")
    if proc.exists():
        try:
            stat = proc.joinpath("stat").read_text().rsplit(")", 1)[1].split()
            if stat[0] == "Z":
                return False
            if started and _process_start(stat) > started + PID_START_SLACK:
                return False  # the pid came back for a newer process
            return marker in proc.joinpath("cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            return False
    return True


def _process_start(stat: list[str]) -> float:
    """When a process started (seconds since the epoch), from the fields of ``/proc/<pid>/stat`` after its name."""
    ticks = int(stat[19])  # field 22, starttime: clock ticks after boot
    boot = next(
        int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime")
    )
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _outcome(
    events: list[dict], returncode: int | None, log: str, stop_requested: float | None = None
) -> tuple[str, str]:
    """(status, message) of an ended job, from its last trainer event, else its exit. A process killed by a signal
    is ``stopped`` only when Stop asked for it; otherwise (the kernel's out-of-memory killer, a ``kill -9``) it
    ``failed``, with the signal and the steps it did."""
    last = next((e for e in reversed(events) if e.get("event") in ("done", "stopped", "error")), None)
    if last is not None and last["event"] == "done":
        return "done", f"adapter saved to {last.get('adapter')}"
    if last is not None and last["event"] == "stopped":
        return "stopped", f"stopped at step {last.get('step')}; adapter saved to {last.get('adapter')}"
    if last is not None:
        return "failed", last.get("message", "")
    if returncode is not None and returncode < 0:
        sig, step = -returncode, max((e["step"] for e in events if e.get("event") == "step"), default=0)
        if stop_requested and sig in (signal.SIGTERM, signal.SIGKILL):
            if step:
                return "stopped", f"stopped at step {step} before the adapter was saved"
            return "stopped", "stopped before training started (no adapter)"
        try:
            name = f" ({signal.Signals(sig).name})"
        except ValueError:
            name = ""
        where = f" at step {step}" if step else " before training started"
        oom = "; the system may have run out of memory" if sig == signal.SIGKILL else ""
        return "failed", f"killed by signal {sig}{name}{where}{oom}"
    errors = [line for line in log.splitlines() if "error" in line.lower()]
    return "failed", (errors[-1] if errors else log.splitlines()[-1] if log else f"exited with code {returncode}")


def train_command(method: str, settings: dict[str, Any], method_flags: dict[str, str], output_dir: Path) -> list[str]:
    """``python -m peftlab train`` argv: trainer settings (``TrainArgs`` names, text or typed) and method config
    flags (text), under the flag names ``peftlab train`` lists (``base_model`` → ``--base``)."""
    flags = {s.name: s.option_string for s in fields_of(TrainArgs)}
    argv = [
        sys.executable,
        "-m",
        "peftlab",
        "train",
        "--method",
        method,
        "--json",
        flags["output_dir"],
        str(output_dir),
    ]
    for key, value in settings.items():
        if value is None or value == "":
            continue  # the trainer's default
        flag = flags.get(key, "--" + key.replace("_", "-"))
        if value is True:
            argv += [flag]
        else:
            argv += [flag, "false" if value is False else str(value)]
    for key, value in method_flags.items():
        argv += ["--" + key.replace("_", "-"), str(value)]
    return argv


def _run_name(runs_dir: Path, method: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", method)
    path, n = runs_dir / f"{stamp}-{slug}", 1
    while path.exists():
        n += 1
        path = runs_dir / f"{stamp}-{slug}-{n}"
    return path


def start_job(
    runs_dir: str | os.PathLike,
    method: str,
    settings: dict[str, Any] | None = None,
    method_flags: dict[str, str] | None = None,
    *,
    env: dict[str, str] | None = None,
    queue: bool = False,
    owner: str | None = None,
    name: str | None = None,
) -> Job:
    """Start training in a child process (its own process group) under ``runs_dir/<name>`` (default
    ``<timestamp>-<method>``; a name already taken is refused).

    ``settings`` are ``TrainArgs`` fields (``max_steps``, ``base_model``, ...), as text (a form's) or typed;
    ``method_flags`` are config fields as text (``{"r": "4"}``). Both are checked first, the way ``peftlab train``
    checks its flags (``TrainArgs.from_strings``: a ``ConfigError`` or ``DatasetError`` names the bad value or
    row, and a method that cannot train the dataset's task is refused). At most ``max_jobs()`` run at once:
    beyond that, raises ``JobError``, or with ``queue`` returns the job ``queued`` (it starts when a slot frees,
    in order).
    ``owner`` (a session id) is recorded: see ``visible``. ``env``: extra environment for the process; its token-like
    variables (``SECRET_NAME``) are held in memory until the process starts, never written to ``job.json``.
    """
    runs_dir = Path(runs_dir)
    named = _named_run(runs_dir, name) if name and name.strip() else None
    where = named or _run_name(runs_dir, method)  # (a name only: the folder is made below, under the lock)
    # refuses bad settings now, checking the folder this run writes to (not the trainer's default ./runs/adapter)
    TrainArgs.from_strings({**(settings or {}), "method": method, "output_dir": str(where)}, method_flags)
    plain, secret = _split_env(env)
    limit = max_jobs()
    with _scheduling(runs_dir):
        _start_queued(runs_dir)  # the jobs already waiting go first
        every = list_jobs(runs_dir)
        running = [j for j in every if j.status == RUNNING]
        comparing = _comparisons(runs_dir)
        waiting = any(j.status == QUEUED for j in every)
        if (len(running) + comparing >= limit or waiting) and not queue:
            raise JobError(
                f"job {running[0].name} is still running (pid {running[0].pid}); stop it first"
                if running
                else "a comparison is running: wait for it to end"
                if comparing
                else "other jobs are waiting for a free slot"
            )
        run_dir = named or _run_name(runs_dir, method)
        try:
            run_dir.mkdir(parents=True)
        except FileExistsError:
            raise JobError(f"a run named {run_dir.name!r} exists already: pick another name") from None
        argv = train_command(method, dict(settings or {}), dict(method_flags or {}), run_dir.resolve())
        form = {"method": method, "settings": _texts(settings), "flags": _texts(method_flags)}
        job = Job(run_dir, 0, argv, method, QUEUED, owner=owner, queued=time.time(), env=plain, form=form)
        if secret:
            _secrets[run_dir.resolve()] = secret
        if len(running) + comparing < limit and not waiting:
            _launch(job)
            return job
        job.save()
    _ensure_scheduler(runs_dir)
    return job


def _split_env(env: dict[str, str] | None) -> tuple[dict[str, str], dict[str, str]]:
    """``env`` as (what ``job.json`` may keep, the token-like variables it must not)."""
    env = {str(k): str(v) for k, v in (env or {}).items()}
    secret = {k: v for k, v in env.items() if SECRET_NAME.search(k)}
    return {k: v for k, v in env.items() if k not in secret}, secret


def _comparisons(runs_dir: Path) -> int:
    """How many background comparisons (``peftlab.compare.start_background``) run under ``runs_dir``: each holds a
    slot, as a job does."""
    from .compare import running_comparisons

    return running_comparisons(runs_dir)


def _texts(values: dict[str, Any] | None) -> dict[str, Any]:
    """Settings as JSON can keep them (text as given; other values as text)."""
    return {k: v if v is None or isinstance(v, (str, bool, int, float)) else str(v) for k, v in (values or {}).items()}


RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,80}$")


def _named_run(runs_dir: Path, name: str) -> Path:
    """``runs_dir/name`` for a run name a user typed: letters, digits, ``_ . -``; refused if taken."""
    name = name.strip()
    if not RUN_NAME.match(name):
        raise JobError(
            f"run name {name!r}: use letters, digits, '_', '.' and '-' (up to 81 characters, not starting with a dot)"
        )
    path = runs_dir / name
    if path.exists():
        raise JobError(f"a run named {name!r} exists already: pick another name")
    return path


def resume_job(job: Job, owner: str | None = None, queue: bool = True, env: dict[str, str] | None = None) -> Job:
    """Continue a stopped, failed or interrupted job from its last checkpoint: the same command with ``--resume``,
    in the same run folder (the progress history continues). Queued like a new job when the slots are full.
    ``env``: as for ``start_job`` (a token the first start was given is not kept: give it again)."""
    from .train import last_checkpoint

    if not visible(job, owner):
        raise JobError(f"job {job.name} belongs to another session")
    if job.refresh().status in (RUNNING, QUEUED):
        raise JobError(f"job {job.name} is {job.status}: nothing to resume")
    if last_checkpoint(job.run_dir) is None:
        raise JobError(f"job {job.name} has no checkpoint to resume from: start it again instead")
    runs_dir = job.run_dir.parent
    plain, secret = _split_env(env)
    with _scheduling(runs_dir):
        # again, under the lock, from job.json (this object may be stale): another page may have resumed it
        try:
            now = Job.load(job.run_dir).refresh()
        except JobError:  # no job.json yet (a Job made in memory): this object is all there is
            now = job
        if now.status in (RUNNING, QUEUED):
            raise JobError(f"job {job.name} is {now.status}: nothing to resume")
        every = list_jobs(runs_dir)
        running = sum(j.status == RUNNING for j in every) + _comparisons(runs_dir)
        waiting = any(j.status == QUEUED for j in every)
        if (running >= max_jobs() or waiting) and not queue:
            raise JobError("every slot is busy: wait for a running job to end")
        job.env = {**job.env, **plain}
        if secret:
            _secrets[job.run_dir.resolve()] = secret
        job.argv = [*job.argv, "--resume"] if "--resume" not in job.argv else job.argv
        job.status, job.queued, job.finished, job.returncode = QUEUED, time.time(), None, None
        job.message, job.stop_requested, job.pid = "", None, 0
        if running < max_jobs() and not waiting:
            _launch(job, append_log=True)
            return job
        job.save()
    _ensure_scheduler(runs_dir)
    return job


def child_environment(owner: str | None, extra: dict[str, str]) -> dict[str, str]:
    """The environment of a process started for ``owner``: this process's, then ``extra``. When owners are kept apart
    (an ``owner``, and not ``shared_jobs()``), this server's Hugging Face tokens (``HUB_TOKEN_VARS``) are left out:
    a visitor's process gets only the token ``extra`` brings (their own login), and without one huggingface_hub is
    told to send none (``HF_HUB_DISABLE_IMPLICIT_TOKEN``: no saved ``hf auth login`` either)."""
    env = dict(os.environ)
    if owner is not None and not shared_jobs():
        for name in HUB_TOKEN_VARS:
            env.pop(name, None)
        if any(extra.get(name) for name in HUB_TOKEN_VARS):
            env.pop("HF_HUB_DISABLE_IMPLICIT_TOKEN", None)
        else:
            env["HF_HUB_DISABLE_IMPLICIT_TOKEN"] = "1"
    return {**env, **extra}


def _launch(job: Job, append_log: bool = False) -> None:
    """Start a queued job's process now (the caller holds ``_scheduling``)."""
    extra = {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", **job.env}
    extra.update(_secrets.pop(job.run_dir.resolve(), {}))
    child_env = child_environment(job.owner, extra)
    resumed = append_log or "--resume" in job.argv
    with open(job.run_dir / LOG_FILE, "ab" if resumed else "wb") as log:
        child = subprocess.Popen(
            job.argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env,
            start_new_session=True,
        )  # own group: Stop reaches it alone
    _children[child.pid] = child
    job.pid, job.status, job.started = child.pid, RUNNING, time.time()
    job.save()


@contextmanager
def _scheduling(runs_dir: Path) -> Iterator[None]:
    """One starter at a time: a lock in this process and one on the runs folder (another app on the same folder)."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    with _queue_lock:
        fd = os.open(runs_dir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock


def _start_queued(runs_dir: Path) -> list[Job]:
    every = list_jobs(runs_dir)
    free = max_jobs() - sum(j.status == RUNNING for j in every) - _comparisons(runs_dir)
    waiting = sorted((j for j in every if j.status == QUEUED), key=lambda j: (j.queued or 0, j.name))
    for job in waiting[: max(0, free)]:
        _launch(job)
    return waiting[: max(0, free)]


def schedule(runs_dir: str | os.PathLike) -> list[Job]:
    """Start as many queued jobs as there are free slots, oldest first; returns those started."""
    with _scheduling(Path(runs_dir)):
        return _start_queued(Path(runs_dir))


def queue_place(job: Job) -> int | None:
    """A queued job's place in its queue (1 = next to start), counting every owner's jobs; None if not queued."""
    if job.refresh().status != QUEUED:
        return None
    waiting = sorted(
        (j for j in list_jobs(job.run_dir.parent) if j.status == QUEUED), key=lambda j: (j.queued or 0, j.name)
    )
    return next((i + 1 for i, j in enumerate(waiting) if j.run_dir == job.run_dir), None)


def _ensure_scheduler(runs_dir: Path) -> None:
    """A thread of this process starts ``runs_dir``'s queued jobs as slots free (it ends when none waits)."""
    key = runs_dir.resolve()
    with _schedulers_lock:
        thread = _schedulers.get(key)
        if thread is not None and thread.is_alive():
            return
        thread = threading.Thread(target=_schedule_loop, args=(key,), daemon=True, name="peftlab-job-queue")
        _schedulers[key] = thread
        thread.start()


def _schedule_loop(runs_dir: Path) -> None:
    while True:
        time.sleep(QUEUE_POLL)
        try:
            schedule(runs_dir)
            waiting = any(j.status == QUEUED for j in list_jobs(runs_dir))
        except Exception:  # noqa: BLE001 (a bad job file or a failed start: try again next time)
            continue
        with _schedulers_lock:
            if not waiting and not any(j.status == QUEUED for j in list_jobs(runs_dir)):
                _schedulers.pop(runs_dir, None)
                return


def list_jobs(runs_dir: str | os.PathLike, owner: str | None = None) -> list[Job]:
    """Every job under ``runs_dir`` that ``owner`` may see (``visible``), newest first, with settled statuses."""
    out = []
    for file in sorted(Path(runs_dir).glob(f"*/{JOB_FILE}"), reverse=True):
        if file.parent.name.startswith("."):  # a run being deleted (``.<name>.deleting``) or other hidden folder
            continue
        try:
            job = Job.load(file.parent).refresh()
        except JobError:
            continue
        if visible(job, owner):
            out.append(job)
    return out


def current_job(runs_dir: str | os.PathLike, owner: str | None = None) -> Job | None:
    """The job of ``owner`` still running or queued under ``runs_dir``, if any (what a reloaded page reattaches
    to). Queued jobs found here, any owner's (an app restarted meanwhile), get a thread that starts them."""
    every = list_jobs(runs_dir)
    if any(j.status == QUEUED for j in every):
        _ensure_scheduler(Path(runs_dir))
    return next((j for j in every if j.status in (RUNNING, QUEUED) and visible(j, owner)), None)


def stop(job: Job, timeout: float = 60.0, owner: str | None = None) -> Job:
    """Stop a job: SIGTERM (the trainer finishes its step, saves a checkpoint and the adapter, exits), then
    SIGKILL if it is still running after ``timeout`` seconds; a queued job leaves the queue. Returns the job with
    its final status, after starting the next queued job. ``owner``: the session asking (see ``visible``)."""
    if not visible(job, owner):
        raise JobError(f"job {job.name} belongs to another session")
    if job.refresh().status == QUEUED:
        with _scheduling(job.run_dir.parent):
            if job.refresh().status == QUEUED:
                job.status, job.finished = "stopped", time.time()
                job.message = "removed from the queue before it started (no adapter)"
                job.save()
                return job
    try:
        return _stop_running(job, timeout)
    finally:
        if job.status != RUNNING:
            schedule(job.run_dir.parent)  # its slot is free: the next queued job starts


def _stop_running(job: Job, timeout: float) -> Job:
    if job.refresh().status != RUNNING:
        return job
    job.stop_requested = time.time()
    job.save()
    _signal(job.pid, signal.SIGTERM)
    deadline = time.time() + timeout
    while job.alive() and time.time() < deadline:
        time.sleep(0.1)
    if job.alive():
        _signal(job.pid, signal.SIGKILL)
        deadline = time.time() + 10
        while job.alive() and time.time() < deadline:
            time.sleep(0.1)
        job.refresh()
        if job.status != RUNNING:
            job.status, job.message = (
                "stopped",
                f"killed after {timeout:.0f} s without stopping; "
                + ("last checkpoint kept" if (job.run_dir / "checkpoints").exists() else "no adapter saved"),
            )
            job.save()
        return job
    return job.refresh()


def _signal(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the child leads its own group (start_new_session)
    except ProcessLookupError:
        pass
    except PermissionError as e:
        raise JobError(f"cannot signal job process {pid}: {e}") from None


def saved_adapters(runs_dir: str | os.PathLike, owner: str | None = None) -> list[tuple[str, Path]]:
    """(label, folder) of every adapter saved under ``runs_dir/*/adapter`` that ``owner`` may see (``visible``: a
    run without ``job.json``, made by the CLI, has no owner), newest first."""
    out = []
    for cfg in sorted(Path(runs_dir).glob("*/adapter/adapter_config.json"), reverse=True):
        folder = cfg.parent
        if folder.parent.name.startswith("."):  # a run being deleted
            continue
        if owner is not None and not shared_jobs() and _run_owner(folder.parent) not in (None, owner):
            continue
        label = folder.parent.name
        try:
            meta = json.loads((folder / "peftlab.json").read_text())
            label += f" ({meta.get('method', '?')})"
        except (OSError, json.JSONDecodeError):
            pass
        out.append((label, folder))
    return out


def _run_owner(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / JOB_FILE).read_text()).get("owner")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


__all__ = [
    "HUB_TOKEN_VARS",
    "Job",
    "JobError",
    "child_environment",
    "start_job",
    "resume_job",
    "current_job",
    "list_jobs",
    "stop",
    "saved_adapters",
    "train_command",
    "PROGRESS_FILE",
    "QUEUED",
    "max_jobs",
    "queue_place",
    "schedule",
    "shared_jobs",
    "visible",
]
