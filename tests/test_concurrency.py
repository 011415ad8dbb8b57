"""One chat engine, several sessions: a client that goes away mid-reply frees the model for the next one, and
concurrent requests for different adapters each get their own adapter's reply."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

import peftlab
from peftlab.testing import randomize_adapter
from peftlab.webui.engine import ChatEngine

pytestmark = pytest.mark.usefixtures("one_thread")

TIMEOUT = 120  # seconds; generous: the test machine may be shared


def make_adapter(base: Path, out: Path, seed: int, method: str = "lora", config: dict | None = None) -> Path:
    from peftlab.models import load_model

    model, _ = load_model(str(base), device="cpu")
    peftlab.add_adapter(model, method, config or {"r": 4}, "a")
    randomize_adapter(model, "a", std=0.5, seed=seed)  # each seed its own greedy replies
    return peftlab.save_adapter(model, out, "a")


@pytest.fixture(scope="module")
def adapters(tiny_dir, tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("adapters")
    return [make_adapter(tiny_dir, root / f"a{seed}", seed) for seed in range(8)]


def in_thread(fn, timeout: float = TIMEOUT):
    """Run ``fn`` on another thread; its result, or a failure if it does not return within ``timeout``."""
    out: list = []
    errors: list = []

    def run():
        try:
            out.append(fn())
        except BaseException as e:  # noqa: BLE001 (re-raised below)
            errors.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"no answer within {timeout} s: the engine hangs"
    if errors:
        raise errors[0]
    return out[0]


def test_a_client_that_goes_away_mid_reply_frees_the_model(adapters):
    """Gradio advances a streaming handler on whichever worker thread is free and closes it from another one
    when the browser disconnects: the next request must still be answered (it used to wait forever)."""
    engine = ChatEngine()
    first = engine.load(adapters[0])
    alone = list(engine.stream(first, "Capital of France?", max_new_tokens=12))[-1]

    gen = engine.stream(first, "Capital of France?", max_new_tokens=10_000)  # would run for minutes
    assert in_thread(lambda: next(gen))  # the first token, on one thread
    assert in_thread(lambda: next(gen))  # the next one, on another
    started = time.time()
    in_thread(gen.close)  # the browser went away: closed from a third thread, no error
    second = engine.load(adapters[1])
    reply = in_thread(lambda: list(engine.stream(second, "Capital of France?", max_new_tokens=12))[-1])
    assert time.time() - started < TIMEOUT / 2  # the abandoned reply stopped early, it did not run to 10,000
    assert reply[0] == alone[0]  # the same base reply: nothing of the abandoned one leaked into it
    assert in_thread(lambda: list(engine.stream(first, "Capital of France?", max_new_tokens=12))[-1]) == alone

    dropped = [engine.stream(first, "Hello", max_new_tokens=10_000)]
    next(dropped[0])
    dropped.clear()  # dropped without close() (garbage collected): the same
    assert in_thread(lambda: list(engine.stream(first, "Capital of France?", max_new_tokens=12))[-1]) == alone


def test_closing_before_the_first_token_and_failures_leave_the_engine_usable(adapters):
    engine = ChatEngine()
    loaded = engine.load(adapters[0])
    engine.stream(loaded, "never started", 8).close()  # closed before it started: nothing to undo
    with engine.lock:  # another reply holds the model: this one waits, and its client leaves while it waits
        gen = engine.stream(loaded, "waiting", 10_000)
        waiter = threading.Thread(target=lambda: next(gen, None), daemon=True)
        waiter.start()
        time.sleep(0.2)
    waiter.join(TIMEOUT)
    gen.close()
    bad = engine.stream(loaded, "x" * 10, max_new_tokens=-5)  # generate refuses it: raised to the consumer
    with pytest.raises(Exception):  # noqa: B017,PT011 (whatever transformers raises)
        in_thread(lambda: list(bad))
    assert in_thread(lambda: list(engine.stream(loaded, "Hi", max_new_tokens=4)))


def test_concurrent_requests_for_different_adapters_get_their_own_replies(adapters):
    """8 sessions ask at once, each with its own adapter: every reply is the one that adapter gives alone."""
    prompt, n = "Name a capital city.", 10
    engine = ChatEngine()
    loaded = [engine.load(path) for path in adapters]
    alone = [list(engine.stream(a, prompt, max_new_tokens=n))[-1] for a in loaded]
    assert len({adapted for _, adapted in alone}) == len(adapters)  # the adapters answer differently
    assert len({base for base, _ in alone}) == 1

    fresh = ChatEngine()  # also loading at the same time, on another engine
    barrier = threading.Barrier(len(adapters))

    def session(path: Path) -> tuple[list[tuple[str, str]], set[str]]:
        barrier.wait()
        a = fresh.load(path)
        pairs, threads = [], set()
        gen = fresh.stream(a, prompt, max_new_tokens=n)
        for pair in gen:  # consumed slowly and in turns with the others
            pairs.append(pair)
            threads.add(threading.current_thread().name)
        return pairs, threads

    with ThreadPoolExecutor(len(adapters)) as pool:
        results = list(pool.map(session, adapters, timeout=TIMEOUT * 2))
    for (pairs, _), want in zip(results, alone):
        assert pairs[-1] == want
        adapted = [a for _, a in pairs]
        assert all(want[1].startswith(a) for a in adapted if a)  # streamed: only its own adapter's text, growing


def test_a_queued_reply_survives_another_session_swapping_the_base(tiny_dir, adapters, tmp_path):
    """Another session's adapter on another base loads that base: a reply for an adapter of the old base, asked
    for before, loads it again instead of failing (or answering with another adapter)."""
    import shutil

    engine = ChatEngine()
    lora = engine.load(adapters[2])
    want = list(engine.stream(lora, "Hi there", max_new_tokens=8))[-1]
    copy = shutil.copytree(tiny_dir, tmp_path / "same-weights-elsewhere")
    engine.load(adapters[3], base=str(copy))  # another base: lora's slot is gone
    assert not any(a is lora for a in engine.adapters.values())
    assert in_thread(lambda: list(engine.stream(lora, "Hi there", max_new_tokens=8))[-1]) == want


def test_generation_runs_with_no_grad(adapters):
    engine = ChatEngine()
    loaded = engine.load(adapters[0])
    assert list(engine.stream(loaded, "Hi", max_new_tokens=3))
    assert torch.is_grad_enabled()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The app served in this process on a free port (its chat engine is the one the handlers use)."""
    from peftlab.webui import build_app

    demo = build_app(tmp_path_factory.mktemp("runs"))
    demo.queue()
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    yield demo, url
    demo.close()


def text(message: dict) -> str:
    """A chatbot message's text, as the client reads it back (a string or a list of text parts)."""
    content = message["content"]
    return (content if isinstance(content, str) else "".join(p.get("text", "") for p in content)).strip()


def test_over_http_a_cancelled_reply_does_not_block_the_next_session(served, adapters, monkeypatch):
    """Two clients (two sessions) of the served app: the first leaves while its reply streams (the server closes
    its handler, as when a browser tab is closed), then the second asks and is answered."""
    from gradio_client import Client

    monkeypatch.setenv("PEFTLAB_SHARE_JOBS", "1")  # one user's app (as on a laptop): any adapter folder opens

    demo, url = served
    first, second = Client(url, verbose=False), Client(url, verbose=False)
    browsers = ("a" * 32, "b" * 32)  # the owner ids the server issues its browsers
    args = (None, str(adapters[0]), "", 512, [], [], "", 0, 1, browsers[0])  # no system prompt, greedy
    job = first.submit("A long story, please.", *args, api_name="/on_send")
    deadline = time.time() + TIMEOUT
    while time.time() < deadline and not any(o[1] and o[1][-1]["content"] for o in job.outputs()):
        time.sleep(0.05)  # until the adapted reply has begun
    job.cancel()
    started = time.time()
    out = second.submit(
        "Capital of France?", None, str(adapters[1]), "", 8, [], [], "", 0, 1, browsers[1], api_name="/on_send"
    )
    base_hist, adapted_hist, _, info = out.result(timeout=TIMEOUT)
    assert time.time() - started < TIMEOUT
    assert "Generation failed" not in info and base_hist, info
    engine = demo.peftlab_engine
    want = list(engine.stream(engine.load(adapters[1]), "Capital of France?", 8))[-1]
    assert (text(base_hist[-1]), text(adapted_hist[-1])) == tuple(w.strip() for w in want)
    first.close()
    second.close()


CHROMIUM = "/usr/bin/chromium"


@pytest.mark.browser
def test_in_the_browser_a_tab_closed_mid_reply_does_not_block_the_next_one(served, adapters, monkeypatch):
    """Headless Chromium: one tab asks for a long reply and is closed while it streams; a tab of another browser
    then asks and is answered."""
    from playwright.sync_api import sync_playwright

    monkeypatch.setenv("PEFTLAB_SHARE_JOBS", "1")  # one user's app (as on a laptop): any adapter folder opens

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    demo, url = served
    bots = """() => ['#chat-base-bot', '#chat-adapted-bot'].map(
        id => [...document.querySelectorAll(id + ' [data-testid="bot"]')].map(e => e.innerText.trim()).pop() || '')"""

    def ask(pg, adapter: Path, message: str, tokens: int) -> None:
        pg.goto(url)
        pg.wait_for_selector("#train-start")
        pg.click("#tab-chat-button")
        pg.fill("#chat-adapter-path textarea", str(adapter))
        pg.press("#chat-adapter-path textarea", "Enter")
        pg.wait_for_function(
            "(document.querySelector('#chat-info') || {}).innerText.includes('Loaded')", timeout=TIMEOUT * 1000
        )
        pg.fill("#chat-max-new-tokens input[type=number]", str(tokens))
        pg.press("#chat-max-new-tokens input[type=number]", "Tab")
        pg.fill("#chat-msg textarea", message)
        pg.click("#chat-send")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            first = browser.new_context()
            pg = first.new_page()
            pg.set_default_timeout(TIMEOUT * 1000)
            ask(pg, adapters[0], "A long story, please.", 512)
            pg.wait_for_function(f"({bots})()[1].length > 0")  # the adapted reply streams
            first.close()  # the tab goes away mid-reply

            second = browser.new_context()
            pg = second.new_page()
            pg.set_default_timeout(TIMEOUT * 1000)
            started = time.time()
            ask(pg, adapters[1], "Capital of France?", 8)
            pg.wait_for_function(f"({bots})()[1].length > 0")  # (the tiny base model's reply may be blank)
            assert time.time() - started < TIMEOUT
            assert "Generation failed" not in pg.inner_text("#chat-info")
            second.close()
        finally:
            browser.close()


@pytest.mark.browser
def test_in_the_browser_a_job_is_seen_only_by_the_browser_that_started_it(served, tiny_dir, monkeypatch):
    """Browser A starts a job: a reload of A reattaches to it, browser B sees no job (and has nothing to stop);
    with PEFTLAB_SHARE_JOBS=1 a browser C sees it."""
    from playwright.sync_api import sync_playwright

    from peftlab import jobs

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    demo, url = served
    runs = demo.peftlab_train.runs_dir
    status = "document.querySelector('#train-status [data-testid=\"markdown\"]').innerText"

    def open_page(ctx):
        pg = ctx.new_page()
        pg.set_default_timeout(TIMEOUT * 1000)
        pg.goto(url)
        pg.wait_for_selector("#train-start")
        return pg

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            a = open_page(browser.new_context())
            a.wait_for_timeout(1000)  # the page load gave this browser its owner id
            a.fill("#train-base textarea", str(tiny_dir))
            for name, value in (("max_steps", 10_000), ("batch_size", 2), ("max_length", 48)):
                a.fill(f"#train-{name} input", str(value))
            a.click("#train-start")
            a.wait_for_function(f"{status}.startsWith('Running')")
            run = jobs.current_job(runs).name
            a.reload()
            a.wait_for_selector("#train-start")
            a.wait_for_function(f"{status}.includes({run!r})")  # the same browser reattaches

            b = open_page(browser.new_context())  # another browser: another owner
            b.wait_for_timeout(2000)
            assert b.inner_text("#train-status").startswith("No job running")
            assert not b.is_enabled("#train-stop")
            monkeypatch.setenv("PEFTLAB_SHARE_JOBS", "1")  # a server that shares jobs: the other browser sees it
            c = open_page(browser.new_context())
            c.wait_for_function(f"{status}.includes({run!r})")
            assert b.inner_text("#train-status").startswith("No job running")  # (B's page loaded before)
        finally:
            browser.close()
            running = jobs.current_job(runs)
            if running is not None:
                jobs.stop(running, timeout=30)
