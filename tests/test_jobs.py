"""Training jobs in a child process (peftlab.jobs): start, progress, reattach, stop, failure, stale job files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from peftlab import jobs
from peftlab.data import DatasetError
from peftlab.errors import ConfigError, UnknownMethodError

# A fast job on the tiny base: small rows, few eval rows; tiny llama has 256 positions.
FAST = {"batch_size": 2, "max_length": 48, "max_eval_samples": 4, "device": "cpu", "dataset": "capitals-json"}
WAIT = 180  # seconds; generous: the test machine may be shared


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A tiny random llama saved as a model folder, with SmolLM2's tokenizer (vocab sizes match)."""
    from peftlab.models import load_tokenizer, tiny_model

    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = load_tokenizer(None)
    tiny_model(vocab_size=len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def wait_for(predicate, timeout: float = WAIT, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def steps(job: jobs.Job) -> list[int]:
    return [e["step"] for e in job.events() if e["event"] == "step"]


def test_train_command_passes_settings_and_method_flags(tmp_path):
    argv = jobs.train_command(
        "lora",
        {"max_steps": 5, "learning_rate": None, "base_model": "", "resume": True},
        {"r": "4", "target_modules": "q_proj, v_proj"},
        tmp_path,
    )
    assert argv[:4] == [sys.executable, "-m", "peftlab", "train"]
    assert argv[argv.index("--method") + 1] == "lora" and "--json" in argv
    assert argv[argv.index("--output") + 1] == str(tmp_path)  # the flag names `peftlab train --help` lists
    assert argv[argv.index("--max-steps") + 1] == "5"
    assert "--learning-rate" not in argv and "--base" not in argv  # empty = the trainer's default
    assert "--resume" in argv  # a true bool is a bare flag
    assert argv[argv.index("--r") + 1] == "4"
    assert argv[argv.index("--target-modules") + 1] == "q_proj, v_proj"


def test_bad_settings_are_refused_before_a_process_starts(tmp_path):
    """start_job checks settings as `peftlab train` does (TrainArgs.from_strings): no run folder, no process."""
    runs = tmp_path / "runs"
    with pytest.raises(ConfigError, match="max_steps"):
        jobs.start_job(runs, "lora", {**FAST, "max_steps": "0"})
    with pytest.raises(ConfigError, match="cannot read 'fast' as float"):
        jobs.start_job(runs, "lora", {**FAST, "learning_rate": "fast"})
    with pytest.raises(ConfigError, match="r must be a positive integer"):
        jobs.start_job(runs, "lora", FAST, {"r": "0"})
    with pytest.raises(UnknownMethodError, match="nope"):
        jobs.start_job(runs, "nope", FAST)
    with pytest.raises(DatasetError, match=r"missing\.jsonl: no such file"):  # the trainer's own check, up front
        jobs.start_job(runs, "lora", {**FAST, "dataset": str(tmp_path / "missing.jsonl")})
    assert not runs.exists() or not list(runs.iterdir())


def test_job_progress_reattach_and_stop(tiny_base, tmp_path):
    runs = tmp_path / "runs"
    job = jobs.start_job(runs, "lora", {**FAST, "base_model": str(tiny_base), "max_steps": 10_000}, {"r": "4"})
    try:
        assert job.run_dir.parent == runs and job.run_dir.name.endswith("-lora")
        assert json.loads((job.run_dir / jobs.JOB_FILE).read_text())["status"] == "running"
        wait_for(lambda: len(steps(job)) >= 2, what="two training steps")
        start = next(e for e in job.events() if e["event"] == "start")
        assert start["trainable"] > 0 and 0 < start["percent"] < 100 and start["steps"] == 10_000
        assert start["config"]["r"] == 4  # the method flag reached the trainer

        # a reloaded page in this process, and a restarted app (a fresh process), both find the job
        again = jobs.current_job(runs)
        assert again is not None and again.run_dir == job.run_dir and again.pid == job.pid
        code = f"from peftlab.jobs import current_job; j = current_job({str(runs)!r}); print(j and j.pid)"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=WAIT)
        assert out.stdout.strip().splitlines()[-1] == str(job.pid), out.stderr[-2000:]
        with pytest.raises(jobs.JobError, match="still running"):
            jobs.start_job(runs, "lora", FAST)  # one job at a time

        seen = len(steps(job))
        wait_for(lambda: len(steps(job)) > seen, what="progress to continue")
        t0 = time.time()
        stopped = jobs.stop(job, timeout=60)
        took = time.time() - t0
    finally:
        if job.alive():
            jobs._signal(job.pid, 9)
    print(f"stop took {took:.1f} s")
    assert took < 30, f"stop took {took:.1f} s"
    assert stopped.status == "stopped" and not job.alive()
    with pytest.raises(ProcessLookupError):
        os.kill(job.pid, 0)  # gone, and reaped (no zombie)
    last = job.events()[-1]
    assert last["event"] == "stopped" and 2 <= last["step"] < 10_000
    assert (job.adapter_dir / "adapter_config.json").exists()
    assert (job.adapter_dir / "adapter_model.safetensors").exists()
    assert list((job.run_dir / "checkpoints").glob("step-*/trainer_state.json"))
    assert json.loads((job.run_dir / jobs.JOB_FILE).read_text())["status"] == "stopped"
    assert jobs.current_job(runs) is None
    assert [p for _, p in jobs.saved_adapters(runs)] == [job.adapter_dir]


def test_job_runs_to_done_and_its_adapter_loads(tiny_base, tmp_path):
    import peftlab
    from peftlab.models import load_model

    runs = tmp_path / "runs"
    job = jobs.start_job(runs, "lora", {**FAST, "base_model": str(tiny_base), "max_steps": 3})
    wait_for(lambda: job.refresh().status != "running", what="the job to finish")
    assert job.status == "done", job.log_tail()
    assert steps(job) == [1, 2, 3]
    assert json.loads((job.run_dir / jobs.JOB_FILE).read_text())["returncode"] == 0
    model, _ = load_model(str(tiny_base), device="cpu")
    assert peftlab.load_adapter(model, job.adapter_dir, "trained") == "trained"
    label, path = jobs.saved_adapters(runs)[0]
    assert path == job.adapter_dir and "(lora)" in label


def test_failed_job_reports_the_error(tmp_path):
    runs = tmp_path / "runs"
    job = jobs.start_job(runs, "lora", {**FAST, "base_model": str(tmp_path / "no-model"), "max_steps": 2})
    wait_for(lambda: job.refresh().status != "running", what="the job to fail")
    assert job.status == "failed"
    assert "no-model does not exist" in job.message
    assert jobs.current_job(runs) is None


def test_stale_running_job_is_settled(tmp_path):
    """A job.json that says running, for a process that is gone (the app was killed), does not block."""
    run = tmp_path / "runs" / "20240101-000000-lora"
    run.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / jobs.JOB_FILE).write_text(json.dumps({"pid": dead.pid, "argv": [], "method": "lora", "status": "running"}))
    (run / "progress.jsonl").write_text(json.dumps({"event": "stopped", "step": 7, "adapter": str(run / "a")}) + "\n")
    assert jobs.current_job(tmp_path / "runs") is None
    settled = jobs.Job.load(run)
    assert settled.status == "stopped" and "step 7" in settled.message


def _kill_all(*started: jobs.Job) -> None:
    for job in started:
        job.refresh()
        if job.alive():
            jobs._signal(job.pid, 9)


def test_jobs_beyond_the_limit_queue_and_start_in_order(tiny_base, tmp_path, monkeypatch):
    """Limit 1: the first job runs, the next two wait (places 1 and 2); stopping the first starts the second at
    once, and when the second ends by itself the queue starts the third."""
    monkeypatch.setenv("PEFTLAB_MAX_JOBS", "1")
    runs = tmp_path / "runs"
    long = {**FAST, "base_model": str(tiny_base), "max_steps": 10_000}
    a = jobs.start_job(runs, "lora", long, {"r": "4"}, queue=True)
    b = jobs.start_job(runs, "lora", {**long, "max_steps": 2}, queue=True)
    c = jobs.start_job(runs, "lora", long, queue=True)
    try:
        assert [a.status, b.status, c.status] == ["running", "queued", "queued"]
        assert (
            b.pid == 0 and not b.alive() and json.loads((b.run_dir / jobs.JOB_FILE).read_text())["status"] == "queued"
        )
        assert [jobs.queue_place(j) for j in (a, b, c)] == [None, 1, 2]
        with pytest.raises(jobs.JobError, match="still running"):
            jobs.start_job(runs, "lora", long)  # without queue: refused, as before
        assert jobs.current_job(runs).run_dir == c.run_dir  # the newest of the running or queued
        wait_for(lambda: len(steps(a)) >= 1, what="the first job's first step")
        assert not steps(b) and not (b.run_dir / jobs.LOG_FILE).exists()  # the queued ones did not start

        assert jobs.stop(a, timeout=60).status == "stopped"
        assert b.refresh().status == "running" and b.pid > 0  # started by stop, the next in line
        assert c.refresh().status == "queued" and jobs.queue_place(c) == 1
        wait_for(lambda: b.refresh().status != "running", what="the second job to finish")
        assert b.status == "done", b.log_tail()
        wait_for(lambda: c.refresh().status == "running", timeout=30, what="the queue to start the third job")
        wait_for(lambda: len(steps(c)) >= 1, what="the third job's first step")
        assert jobs.stop(c, timeout=60).status == "stopped"
    finally:
        _kill_all(a, b, c)
    assert jobs.current_job(runs) is None


def test_a_queued_job_can_be_stopped_and_the_limit_is_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTLAB_MAX_JOBS", "0")
    with pytest.raises(jobs.JobError, match="PEFTLAB_MAX_JOBS must be a positive integer"):
        jobs.start_job(tmp_path / "runs", "lora", FAST)
    monkeypatch.delenv("PEFTLAB_MAX_JOBS")
    assert jobs.max_jobs() >= 1


def test_sessions_see_and_stop_only_their_own_jobs(tiny_base, tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTLAB_MAX_JOBS", "1")
    monkeypatch.delenv("PEFTLAB_SHARE_JOBS", raising=False)
    runs = tmp_path / "runs"
    long = {**FAST, "base_model": str(tiny_base), "max_steps": 10_000}
    alice = jobs.start_job(runs, "lora", long, queue=True, owner="alice")
    bob = jobs.start_job(runs, "lora", long, queue=True, owner="bob")
    try:
        assert (alice.status, bob.status) == ("running", "queued")
        assert [j.run_dir for j in jobs.list_jobs(runs, "alice")] == [alice.run_dir]
        assert [j.run_dir for j in jobs.list_jobs(runs, "bob")] == [bob.run_dir]
        assert len(jobs.list_jobs(runs)) == 2  # the API and the CLI (no owner) see every job
        assert jobs.current_job(runs, "alice").run_dir == alice.run_dir
        assert jobs.current_job(runs, "bob").run_dir == bob.run_dir
        assert jobs.current_job(runs, "carol") is None
        assert jobs.queue_place(bob) == 1  # the place counts everyone's jobs
        with pytest.raises(jobs.JobError, match="another session"):
            jobs.stop(alice, owner="bob")
        assert alice.refresh().status == "running" and alice.alive()
        assert json.loads((alice.run_dir / jobs.JOB_FILE).read_text())["owner"] == "alice"

        monkeypatch.setenv("PEFTLAB_SHARE_JOBS", "1")  # the server shares jobs: everyone sees everything
        assert len(jobs.list_jobs(runs, "carol")) == 2 and jobs.current_job(runs, "carol") is not None
        monkeypatch.delenv("PEFTLAB_SHARE_JOBS")

        gone = jobs.stop(bob, owner="bob")  # a queued job leaves the queue, no process was started
        assert gone.status == "stopped" and "queue" in gone.message and gone.pid == 0
        assert jobs.current_job(runs, "bob") is None
        assert jobs.stop(alice, owner="alice", timeout=60).status == "stopped"
    finally:
        _kill_all(alice, bob)


def test_a_named_run_is_refused_when_taken_or_malformed(tiny_base, tmp_path):
    runs = tmp_path / "runs"
    (runs / "taken").mkdir(parents=True)
    with pytest.raises(jobs.JobError, match="exists already"):
        jobs.start_job(runs, "lora", {**FAST, "base_model": str(tiny_base)}, name="taken")
    with pytest.raises(jobs.JobError, match="run name '../x'"):
        jobs.start_job(runs, "lora", {**FAST, "base_model": str(tiny_base)}, name="../x")
    assert sorted(p.name for p in runs.iterdir()) == ["taken"]  # nothing started, nothing made


def test_a_stopped_job_resumes_in_its_folder_to_the_end(tiny_base, tmp_path):
    runs = tmp_path / "runs"
    settings = {**FAST, "base_model": str(tiny_base), "max_steps": 40, "save_every": 2}
    job = jobs.start_job(runs, "lora", settings, {"r": "4"}, name="my-run")
    assert job.run_dir == runs / "my-run"
    assert job.form == {"method": "lora", "settings": {k: v for k, v in settings.items()}, "flags": {"r": "4"}}
    assert jobs.Job.load(job.run_dir).form == job.form  # kept in job.json: a reloaded page shows these settings
    try:
        wait_for(lambda: len(steps(job)) >= 3, what="three training steps")
        stopped = jobs.stop(job, timeout=60)
    finally:
        if job.alive():
            jobs._signal(job.pid, 9)
    assert stopped.status == "stopped"
    at = max(steps(job))
    again = jobs.resume_job(jobs.Job.load(job.run_dir))
    assert again.status == "running" and "--resume" in again.argv and again.run_dir == job.run_dir
    wait_for(lambda: again.refresh().status != "running", what="the resumed job to finish")
    assert again.status == "done", again.log_tail()
    done = steps(again)
    assert done[-1] == 40 and at < 40 and done[0] == 1  # the history goes on from before the stop
    with pytest.raises(jobs.JobError, match="nothing to resume|no checkpoint"):
        jobs.resume_job(jobs.Job(tmp_path, 0, [], "lora", status="running"))


# --- review fixes: tokens, kills, reused pids, hidden folders, the queue, resume -------------------------------------

ALICE = "a" * 32  # a browser owner id of the form the web app issues


def fake_trainer(monkeypatch, code: str) -> None:
    """``start_job`` runs ``python -c code RUN_DIR`` instead of the trainer (its settings are still checked first);
    the run folder on its command line is what ``alive`` looks for, as in a trainer's."""
    monkeypatch.setattr(
        jobs, "train_command", lambda method, settings, flags, out: [sys.executable, "-c", code, str(out)]
    )


def test_a_visitors_job_gets_its_own_token_and_never_the_servers(tmp_path, monkeypatch):
    """Owners kept apart: a session's job runs without the server's Hugging Face tokens (and with huggingface_hub
    told to send none), or with the visitor's own; that token never reaches job.json. The CLI/API and a shared
    server keep the process's own."""
    monkeypatch.delenv("PEFTLAB_SHARE_JOBS", raising=False)
    monkeypatch.delenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", raising=False)
    monkeypatch.setenv("PEFTLAB_MAX_JOBS", "4")
    for name in jobs.HUB_TOKEN_VARS:
        monkeypatch.setenv(name, "hf_servertoken123456")
    fake_trainer(monkeypatch, "import json, os, sys; json.dump(dict(os.environ), open(sys.argv[1] + '/env.json', 'w'))")
    runs = tmp_path / "runs"

    def env_of(**kwargs) -> tuple[jobs.Job, dict]:
        job = jobs.start_job(runs, "lora", FAST, **kwargs)
        wait_for(lambda: job.refresh().status != "running", what="the job to end")
        return job, json.loads((job.run_dir / "env.json").read_text())

    _, env = env_of(owner=ALICE)
    assert not [name for name in jobs.HUB_TOKEN_VARS if name in env]
    assert env["HF_HUB_DISABLE_IMPLICIT_TOKEN"] == "1"  # no saved `hf auth login` either
    job, env = env_of(owner=ALICE, env={"HF_TOKEN": "hf_visitortoken123456", "PEFTLAB_NOTE": "kept"})
    assert env["HF_TOKEN"] == "hf_visitortoken123456" and "HUGGING_FACE_HUB_TOKEN" not in env
    assert "HF_HUB_DISABLE_IMPLICIT_TOKEN" not in env and env["PEFTLAB_NOTE"] == "kept"
    saved = (job.run_dir / jobs.JOB_FILE).read_text()
    assert "hf_visitortoken" not in saved and json.loads(saved)["env"] == {"PEFTLAB_NOTE": "kept"}
    assert env_of()[1]["HF_TOKEN"] == "hf_servertoken123456"  # the CLI or API (no owner): its own process's
    monkeypatch.setenv("PEFTLAB_SHARE_JOBS", "1")  # one user's laptop: the token is theirs
    assert env_of(owner=ALICE)[1]["HF_TOKEN"] == "hf_servertoken123456"


def test_a_job_killed_from_outside_failed_and_only_a_stop_is_stopped(tmp_path, monkeypatch):
    """A kill -9 (the kernel's out-of-memory killer) is a failure with its signal and step, not a user's Stop."""
    import signal

    step = "{'event': 'step', 'step': 3, 'loss': 1.0}"
    fake_trainer(
        monkeypatch,
        f"import json, sys, time; open(sys.argv[1] + '/progress.jsonl', 'w').write(json.dumps({step}) + '\\n'); "
        "time.sleep(120)",
    )
    runs = tmp_path / "runs"
    job = jobs.start_job(runs, "lora", FAST)
    try:
        wait_for(lambda: steps(job), what="a step")
        os.killpg(job.pid, signal.SIGKILL)
        wait_for(lambda: job.refresh().status != "running", what="the job to end")
    finally:
        _kill_all(job)
    assert job.status == "failed", job.message
    assert job.message.startswith("killed by signal 9 (SIGKILL) at step 3") and "memory" in job.message
    second = jobs.start_job(runs, "lora", FAST)
    try:
        wait_for(lambda: steps(second), what="a step")
        assert jobs.stop(second, timeout=30).status == "stopped"  # SIGTERM, asked for
    finally:
        _kill_all(second)
    assert second.message == "stopped at step 3 before the adapter was saved"
    assert jobs._outcome([], -15, "", None)[0] == "failed"  # a SIGTERM nobody asked for either
    assert jobs._outcome([], -15, "", 1.0) == ("stopped", "stopped before training started (no adapter)")


def test_a_reused_pid_is_not_taken_for_the_job(tmp_path, monkeypatch):
    """A process that started after the job did, or one we may not signal whose command line is not the job's, is
    not the job's process: the job settles instead of running forever."""
    run = tmp_path / "runs" / "20240101-000000-lora"
    run.mkdir(parents=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", str(run)])
    try:
        assert jobs.Job(run, sleeper.pid, [], "lora").alive()  # the job's own process
        old = jobs.Job(run, sleeper.pid, [], "lora", started=time.time() - 3600)  # the job started an hour before
        old.save()
        assert not old.alive() and old.refresh().status == "failed"

        real_kill = os.kill

        def kill(pid, sig):  # a process of another user: not ours to signal
            if pid == sleeper.pid and sig == 0:
                raise PermissionError(1, "Operation not permitted")
            return real_kill(pid, sig)

        monkeypatch.setattr(jobs.os, "kill", kill)
        assert not jobs.Job(tmp_path / "runs" / "another-run", sleeper.pid, [], "lora").alive()
        assert jobs.Job(run, sleeper.pid, [], "lora").alive()  # /proc still names the real one
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_half_deleted_run_is_no_job_and_no_adapter(tmp_path):
    hidden = tmp_path / "runs" / ".20240101-000000-lora.deleting"
    (hidden / "adapter").mkdir(parents=True)
    (hidden / "adapter" / "adapter_config.json").write_text("{}")
    jobs.Job(hidden, 0, [], "lora", "done").save()
    assert jobs.list_jobs(tmp_path / "runs") == [] and jobs.saved_adapters(tmp_path / "runs") == []


def test_a_job_checks_its_own_run_folder_not_the_trainers_default(tmp_path, monkeypatch):
    """The settings check looks at the folder the run writes to, not ./runs/adapter (here a file, which is not in
    the way of a runs folder elsewhere)."""
    monkeypatch.chdir(tmp_path)
    Path("runs").write_text("not a folder")
    fake_trainer(monkeypatch, "pass")
    job = jobs.start_job(tmp_path / "elsewhere", "lora", FAST)
    wait_for(lambda: job.refresh().status != "running", what="the job to end")
    assert job.run_dir.parent == tmp_path / "elsewhere"
    with pytest.raises(ConfigError, match="cannot be made"):  # a runs folder that cannot be made: refused up front
        jobs.start_job(tmp_path / "runs" / "inside-a-file", "lora", FAST)


def test_any_page_restarts_the_queue_an_app_left(tmp_path, monkeypatch):
    """Jobs one owner queued before the app stopped start when any page (another owner's) looks at the runs."""
    monkeypatch.delenv("PEFTLAB_SHARE_JOBS", raising=False)
    monkeypatch.setenv("PEFTLAB_MAX_JOBS", "1")
    run = tmp_path / "runs" / "20240101-000000-lora"
    run.mkdir(parents=True)
    argv = [sys.executable, "-c", "pass", str(run)]
    jobs.Job(run, 0, argv, "lora", jobs.QUEUED, owner="b" * 32, queued=1.0).save()
    assert jobs.current_job(tmp_path / "runs", ALICE) is None  # not alice's to see, but the queue moves
    wait_for(lambda: jobs.Job.load(run).status != jobs.QUEUED, timeout=30, what="the queue to start the job")


def test_a_resume_is_checked_again_under_the_lock(tmp_path):
    """A page whose job object is stale (another page resumed the job meanwhile) does not resume it twice."""
    run = tmp_path / "runs" / "20240101-000000-lora"
    (run / "checkpoints" / "step-000001").mkdir(parents=True)
    (run / "checkpoints" / "step-000001" / "trainer_state.json").write_text("{}")
    jobs.Job(run, 0, [sys.executable, "-c", "pass", str(run)], "lora", "stopped").save()
    stale = jobs.Job.load(run)
    other = jobs.Job.load(run)
    other.status, other.queued = jobs.QUEUED, time.time()
    other.save()
    with pytest.raises(jobs.JobError, match="is queued: nothing to resume"):
        jobs.resume_job(stale)
