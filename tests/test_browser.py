"""The real web app in headless Chromium: train LoRA on SmolLM2, watch the loss plot, chat with the adapter;
then start a longer job, reload the page (it reattaches), and stop it.

Run: ``pytest tests/test_browser.py -m browser -s`` (screenshots are written to the test's tmp folder).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from peftlab.webui.plots import COLORS

pytestmark = [pytest.mark.browser, pytest.mark.smollm2]

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
TRAIN_S = 240_000  # ms a short SmolLM2 job may take on a busy 2-core machine


def shots(tmp_path: Path) -> Path:
    """Where screenshots go: ``$PEFTLAB_SCREENSHOTS`` (the README's come from there), else the test's tmp folder."""
    folder = Path(os.environ.get("PEFTLAB_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(env: dict, log_file: Path, timeout: float = 180):
    """``python app.py`` with ``env`` (``PEFTLAB_PORT`` set), its output in ``log_file``; yields its URL once it
    answers, and stops it (SIGTERM, then kill) afterwards."""
    url = f"http://127.0.0.1:{env['PEFTLAB_PORT']}"
    with open(log_file, "wb") as log:
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + timeout
            while time.time() < deadline:
                if proc.poll() is not None:
                    raise RuntimeError(f"app.py exited: {log_file.read_text()[-3000:]}")
                try:
                    urllib.request.urlopen(url, timeout=2)
                    break
                except OSError:
                    time.sleep(0.5)
            else:
                raise RuntimeError(f"app.py did not start within {timeout:.0f} s")
            yield url
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """``python app.py`` on a free port, jobs under a temporary runs folder."""
    runs = tmp_path_factory.mktemp("runs")
    env = {
        **os.environ,
        "PEFTLAB_PORT": str(free_port()),
        "PEFTLAB_RUNS": str(runs),
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    if os.getloadavg()[0] > (os.cpu_count() or 1):  # a busy machine: one thread per process avoids OpenMP
        env.setdefault("OMP_NUM_THREADS", "1")  # spin-waiting, which made each step ~3x slower in our runs
    with running_app(env, runs.parent / "app.log") as url:
        yield url, runs
        from peftlab import jobs

        running = jobs.current_job(runs)
        if running is not None:
            jobs.stop(running, timeout=30)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, app):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    pg.set_default_timeout(60_000)
    pg.goto(app[0])
    pg.wait_for_selector("#train-start")
    yield pg
    ctx.close()


def md(pg, elem_id: str) -> str:
    """The text of a Markdown widget (without gradio's hidden progress timer)."""
    return pg.inner_text(f'#{elem_id} [data-testid="markdown"]')


def wait_js(pg, body: str, timeout: float = 60_000) -> None:
    """Wait until the JS expression ``body`` is true; ``MD(id)`` reads a Markdown widget's text."""
    pg.wait_for_function(
        f"""() => {{
        const MD = id => (document.querySelector('#' + id + ' [data-testid="markdown"]') || {{}}).innerText || '';
        return {body}; }}""",
        timeout=timeout,
    )


def pick(pg, dropdown: str, value: str) -> None:
    """Choose ``value`` in a gradio dropdown (by the option's exact label)."""
    pg.click(f"#{dropdown} input")
    pg.click(f'li[role="option"][aria-label="{value}"]')
    assert pg.input_value(f"#{dropdown} input") == value


def set_number(pg, elem_id: str, value) -> None:
    pg.fill(f"#{elem_id} input", str(value))


def fill_training(pg, steps: int) -> None:
    set_number(pg, "train-max_steps", steps)
    set_number(pg, "train-batch_size", 2)
    set_number(pg, "train-max_length", 64)
    if not pg.is_visible("#train-max_eval_samples"):
        pg.click("#train-more")
    set_number(pg, "train-max_eval_samples", 2)


def step_shown(pg) -> int:
    m = re.search(r"step (\d+) / \d+", md(pg, "train-progress"))
    return int(m.group(1)) if m else -1


def drawn_series(pg) -> set[str]:
    """The series the loss plot draws (by their colours): "train" as a line through two or more points, "eval" as
    points (never joined)."""
    found = pg.evaluate("""() => ({
        lines: [...document.querySelectorAll('#loss-plot .mark-line path')]
            .filter(p => (p.getAttribute('d') || '').includes('L')).map(p => p.getAttribute('stroke')),
        points: [...document.querySelectorAll('#loss-plot .mark-symbol path')].map(p => p.getAttribute('fill')),
    })""")
    drawn = {"train"} if COLORS["train"] in found["lines"] else set()
    return drawn | ({"eval"} if COLORS["eval"] in found["points"] and COLORS["eval"] not in found["lines"] else set())


def test_train_watch_plot_then_chat(page, app, tmp_path):
    pg, runs = page, app[1]
    t0 = time.time()
    assert md(pg, "train-status").startswith("No job running")
    pick(pg, "train-dataset", "capitals-json")
    pick(pg, "train-method", "lora")
    assert pg.is_visible("#method-form-lora") and not pg.is_visible("#method-form-prefix_tuning")
    assert "mergeable: yes" in pg.inner_text("#train-method-info")
    fill_training(pg, 4)
    pg.click("#train-start")
    wait_js(pg, "MD('train-status').startsWith('Running')")

    seen: list[int] = []
    deadline = time.time() + TRAIN_S / 1000
    while time.time() < deadline:
        step = step_shown(pg)
        if step > 0 and (not seen or step > seen[-1]):
            seen.append(step)
        if md(pg, "train-status").startswith(("Done", "Failed")):
            break
        pg.wait_for_timeout(250)
    status = md(pg, "train-status")
    assert status.startswith("Done"), status
    assert seen and seen[-1] == 4 and seen == sorted(seen), seen  # the step count rose while it trained
    assert re.search(r"Trainable parameters: [\d,]+ of [\d,]+ \(0\.\d+ %\)", md(pg, "train-params"))
    deadline = time.time() + 10
    while drawn_series(pg) != {"train", "eval"} and time.time() < deadline:
        pg.wait_for_timeout(250)
    assert drawn_series(pg) == {"train", "eval"}  # train loss per step, eval loss before and after
    pg.screenshot(path=str(shots(tmp_path) / "train.png"), full_page=True)
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    assert (run / "adapter" / "adapter_config.json").exists()
    print(f"\ntrained in {time.time() - t0:.0f} s; steps seen {seen}; screenshot {shots(tmp_path) / 'train.png'}")

    t1 = time.time()
    pg.click("#tab-chat-button")
    pg.wait_for_function(f"document.querySelector('#chat-adapter input').value.startsWith({run.name!r})")
    wait_js(pg, "MD('chat-info').startsWith('Loaded')", timeout=120_000)
    assert "one batched pass" in md(pg, "chat-info")
    pg.fill("#chat-max-new-tokens input[type=number]", "16")
    pg.press("#chat-max-new-tokens input[type=number]", "Tab")
    pg.fill("#chat-msg textarea", "Germany's capital is Berlin, not Munich or Hamburg.")
    pg.click("#chat-send")
    replies = """() => ['#chat-base-bot', '#chat-adapted-bot'].map(
        id => [...document.querySelectorAll(id + ' [data-testid="bot"]')].map(e => e.innerText.trim()).pop() || '')"""
    pg.wait_for_function(f"({replies})().every(t => t.length > 0)", timeout=120_000)
    pg.wait_for_timeout(1500)  # let the stream finish a few more tokens for the screenshot
    base, adapted = pg.evaluate(replies)
    pg.screenshot(path=str(shots(tmp_path) / "chat.png"), full_page=True)
    print(f"chat in {time.time() - t1:.0f} s\n  base:    {base!r}\n  adapted: {adapted!r}")
    assert base and adapted


def test_reload_reattaches_and_stop_stops(page, app, tmp_path):
    pg, runs = page, app[1]
    before = {p.name for p in runs.iterdir()}
    pg.wait_for_function("() => document.querySelector('#train-preview').innerText.includes('capital')")  # 1st rows
    fill_training(pg, 500)
    pg.click("#train-start")
    wait_js(pg, "MD('train-status').startsWith('Running')")
    (run,) = [p for p in runs.iterdir() if p.name not in before]
    wait_js(pg, "/step [1-9]\\d* \\//.test(MD('train-progress'))", timeout=TRAIN_S)
    step_before = step_shown(pg)

    pg.reload()
    pg.wait_for_selector("#train-start")
    wait_js(pg, f"MD('train-status').includes({run.name!r})")
    assert md(pg, "train-status").startswith("Running")
    wait_js(
        pg, f"(/step (\\d+) \\//.exec(MD('train-progress')) || [0, -1])[1] > {step_before}", timeout=TRAIN_S
    )  # progress continues after the reload
    assert pg.is_enabled("#train-stop") and not pg.is_enabled("#train-start")
    assert "train" in drawn_series(pg)  # the reattached page redrew the curve so far

    t0 = time.time()
    pg.click("#train-stop")
    wait_js(pg, "MD('train-status').startsWith('Stopped')", timeout=120_000)
    took = time.time() - t0
    pg.screenshot(path=str(tmp_path / "stopped.png"), full_page=True)
    print(f"\nstopped {took:.0f} s after pressing Stop: {md(pg, 'train-status')}")
    job = json.loads((run / "job.json").read_text())
    assert job["status"] == "stopped" and job["stop_requested"]
    assert (run / "adapter" / "adapter_model.safetensors").exists()  # the trainer saved on SIGTERM
    last = [json.loads(line) for line in (run / "progress.jsonl").read_text().splitlines()][-1]
    assert last["event"] == "stopped" and last["step"] < 500
    with pytest.raises(ProcessLookupError):
        os.kill(job["pid"], 0)
    assert pg.is_enabled("#train-start")
    assert "ETA" not in md(pg, "train-progress")

    # Resume continues the stopped run in its folder, from its checkpoint
    assert pg.is_enabled("#train-resume")
    pg.click("#train-resume")
    wait_js(pg, f"MD('train-status').startsWith('Running') && MD('train-status').includes({run.name!r})")
    wait_js(pg, f"(/step (\\d+) \\//.exec(MD('train-progress')) || [0, -1])[1] > {last['step']}", timeout=TRAIN_S)
    pg.click("#train-stop")
    wait_js(pg, "MD('train-status').startsWith('Stopped')", timeout=120_000)
    assert "--resume" in json.loads((run / "job.json").read_text())["argv"]

    # an uploaded file is checked with the trainer's reader: a clear error, and Start refuses it
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{not json\n')
    pg.set_input_files("#train-upload input[type=file]", str(bad))
    wait_js(pg, "MD('train-dataset-info').includes('cannot be used')")
    assert "bad.jsonl" in md(pg, "train-dataset-info")
    runs_before = sorted(p.name for p in runs.iterdir())
    assert "line 2: invalid JSON" in md(pg, "train-dataset-info")
    pg.wait_for_function("() => document.querySelector('#train-start').disabled")  # Start waits for a usable file
    assert sorted(p.name for p in runs.iterdir()) == runs_before  # no job was started
