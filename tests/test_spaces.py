"""The Space: its folder (card header, requirements), the app's address and sharing defaults, the ZeroGPU helper, the
Hugging Face login as the owner of jobs and pushes, and -- slow, in the browser -- the folder installed into a fresh
virtualenv, started with Gradio's local OAuth mock against the local Hub server: log in, train, push.

Run the slow one: ``pytest tests/test_spaces.py -m browser -s`` (it prints the install and run times).
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import os
import signal
import subprocess
import sys
import time
import types
import urllib.request
from pathlib import Path

import gradio as gr
import pytest
import yaml

from peftlab import jobs
from peftlab.jobs import Job
from peftlab.models import DEFAULT_MODEL_ID
from peftlab.webui import app as webapp

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("space_build", ROOT / "spaces" / "build.py")
space_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(space_build)
pytest_plugins = ["tests.hub_fixture"]
MOCK_TOKEN = "mock-oauth-token-for-local-dev"  # what gradio's local OAuth mock puts in the session


@pytest.fixture(scope="module")
def space(tmp_path_factory) -> Path:
    out = subprocess.run(
        [sys.executable, str(ROOT / "spaces" / "build.py"), str(tmp_path_factory.mktemp("space") / "space")],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip())


def header(folder: Path) -> dict:
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_space_card_header_is_complete_and_names_the_gradio_in_use(space):
    card = header(space)
    assert card["sdk"] == "gradio" and card["app_file"] == "app.py" and (space / card["app_file"]).exists()
    assert card["sdk_version"] == gr.__version__  # what build.py read from the gradio in use
    assert card["python_version"] == f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert card["hf_oauth"] is True and "write-repos" in card["hf_oauth_scopes"]  # a push writes the user's repos
    assert "contribute-repos" in card["hf_oauth_scopes"]  # and creates the repo on the first push
    assert card["models"] == [DEFAULT_MODEL_ID] and "peft" in card["tags"]
    assert 0 < len(card["short_description"]) <= 60  # the Hub's limit
    source = header(ROOT / "spaces")  # the source card has no versions: build.py writes them
    assert "sdk_version" not in source and "python_version" not in source
    again = space_build.card(space_build.card((ROOT / "spaces" / "README.md").read_text(), {"sdk_version": "1"}), {})
    assert "sdk_version" not in again.split("---\n")[1]  # rebuilding replaces the lines, never doubles them
    with pytest.raises(ValueError, match="YAML header"):
        space_build.card("# no header\n", {})


def test_space_build_carries_every_requirement(space):
    reqs = (space / "requirements.txt").read_text().split()
    assert "./core[app]" in reqs and "./hub" in reqs and "./plugins/lora" in reqs
    assert f"gradio[oauth]=={gr.__version__}" in reqs  # the login's libraries, at the card's version
    for req in reqs:
        if req.startswith("./"):
            folder = space / req.split("[")[0]
            assert (folder / "pyproject.toml").exists(), f"{req} is not in the built Space"
    assert not list(space.rglob("tests")) and not list(space.rglob("*.egg-info")), "only what installs is deployed"
    assert "peftlab.webui" in (space / "app.py").read_text()


def test_server_address_reads_peftlab_then_gradio_variables(monkeypatch):
    for key in ("PEFTLAB_HOST", "PEFTLAB_PORT", "GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT"):
        monkeypatch.delenv(key, raising=False)
    assert webapp.server_address() == ("127.0.0.1", 7860)
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7861")
    assert webapp.server_address() == ("0.0.0.0", 7861)  # what a Space sets
    monkeypatch.setenv("PEFTLAB_HOST", "127.0.0.2")
    monkeypatch.setenv("PEFTLAB_PORT", "7862")
    assert webapp.server_address() == ("127.0.0.2", 7862)  # PEFTLAB_* win over GRADIO_*
    assert webapp.server_address("localhost", 9000) == ("localhost", 9000)  # arguments win over both
    monkeypatch.setenv("PEFTLAB_PORT", "http")
    with pytest.raises(webapp.PeftlabError, match="PEFTLAB_PORT must be a port number"):
        webapp.server_address()


def test_sharing_jobs_is_the_default_on_a_laptop_only(monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)
    assert webapp.share_default("127.0.0.1") and webapp.share_default("localhost")
    assert not webapp.share_default("0.0.0.0")  # others can reach it: each browser its own
    monkeypatch.setenv("SPACE_ID", "alice/peftlab")
    assert not webapp.share_default("127.0.0.1")  # a Space is shared by its visitors
    monkeypatch.setenv("PEFTLAB_SHARE_JOBS", "maybe")
    with pytest.raises(jobs.JobError, match="PEFTLAB_SHARE_JOBS must be 1"):
        jobs.shared_jobs()


def fake_spaces(monkeypatch) -> list:
    """A ``spaces`` package whose ``GPU`` records what it decorates (as ZeroGPU's does, it returns a wrapper)."""
    calls = []

    def GPU(fn=None, duration=None):  # noqa: N802 (the package's name)
        if fn is None:
            return lambda f: GPU(f, duration)

        def wrapper(*args, **kwargs):
            calls.append((fn.__name__, duration))
            return fn(*args, **kwargs)

        wrapper.zero_gpu = True
        return wrapper

    module = types.ModuleType("spaces")
    module.__spec__ = importlib.machinery.ModuleSpec("spaces", None)
    module.GPU = GPU
    monkeypatch.setitem(sys.modules, "spaces", module)
    return calls


def test_gpu_wraps_with_spaces_GPU_when_installed_and_is_a_no_op_without(monkeypatch, tmp_path):
    def work(x):
        return x + 1

    monkeypatch.setattr(webapp, "find_spec", lambda name: None)  # no spaces package
    assert webapp.gpu(work) is work and webapp.gpu(duration=30)(work) is work
    # (the repository's own spaces/ folder is importable from its root: a namespace package without GPU)
    monkeypatch.setattr(webapp, "find_spec", lambda name: importlib.machinery.ModuleSpec(name, None))
    monkeypatch.setitem(sys.modules, "spaces", types.ModuleType("spaces"))
    assert webapp.gpu(work) is work

    calls = fake_spaces(monkeypatch)
    wrapped = webapp.gpu(work)
    assert wrapped is not work and wrapped(1) == 2 and calls == [("work", None)]
    assert webapp.gpu(duration=30)(work)(2) == 3 and calls[-1] == ("work", 30)
    demo = webapp.build_app(tmp_path / "runs")  # the app's GPU work: the chat engine's generation
    assert getattr(demo.peftlab_engine.stream, "zero_gpu", False)


BROWSER_1, BROWSER_2 = "1" * 32, "2" * 32  # browser owner ids of the form the server issues


def profile(username: str) -> gr.OAuthProfile:
    return gr.OAuthProfile({"name": username, "preferred_username": username, "profile": "", "picture": ""})


def test_a_hugging_face_login_owns_the_jobs_and_adapters_it_sees(tmp_path, monkeypatch):
    """TrainTab and HubTab with a login (``gr.OAuthProfile``): the owner is ``hf:<user>`` in any browser; another
    user neither reattaches to it, nor stops it, nor is offered its adapter to push."""
    from peftlab.webui.hub_tab import HubTab, default_repo
    from peftlab.webui.train_tab import user_owner

    monkeypatch.delenv("PEFTLAB_SHARE_JOBS", raising=False)
    runs = tmp_path / "runs"
    mine, theirs, cli = runs / "20250101-000001-lora", runs / "20250101-000002-lora", runs / "20250101-000003-lora"
    anonymous = runs / "20250101-000004-lora"  # trained in browser-1 before its user signed in
    for run in (mine, theirs, cli, anonymous):
        (run / "adapter").mkdir(parents=True)
        (run / "adapter" / "adapter_config.json").write_text("{}")
    Job(mine, 0, [], "lora", "queued", owner="hf:alice", queued=1.0).save()
    Job(theirs, 0, [], "lora", "queued", owner="hf:bob", queued=2.0).save()  # (cli: no job.json, no owner)
    Job(anonymous, 0, [], "lora", "done", owner=BROWSER_1).save()

    assert user_owner(profile("alice")) == "hf:alice" and user_owner(None) is None
    tab = webapp.build_app(tmp_path / "app-runs").peftlab_train  # the real tab (its page-load outputs and all)
    monkeypatch.setattr(tab, "runs_dir", runs)
    out = tab.on_load(BROWSER_1, profile("alice"))
    assert out[0] == str(mine) and BROWSER_1 in out  # the login's job, whatever the browser (which it keeps)
    assert tab.on_load(BROWSER_1, profile("bob"))[0] == str(theirs)
    assert tab.on_poll(str(theirs), -1, BROWSER_1, profile("alice"))[2].startswith("No job running")
    assert tab.on_stop(str(theirs), BROWSER_1, profile("alice"))[2] == "Nothing to stop."
    assert Job.load(theirs).status == "queued"

    hub = HubTab(runs, store_dir=tmp_path / "store")
    offered = [Path(v).parent for _, v in hub.on_refresh(None, BROWSER_1, profile("alice")).choices]
    assert offered == [anonymous, cli, mine]  # alice's, this browser's and the CLI's (no owner), newest first
    offered = [Path(v).parent for _, v in hub.on_refresh(None, BROWSER_2, profile("alice")).choices]
    assert offered == [cli, mine]  # alice in another browser: not browser-1's, never bob's
    assert [Path(v).parent for _, v in hub.on_refresh(None, BROWSER_1, None).choices] == [anonymous, cli]
    assert [Path(v).parent for _, v in hub.choices(None)] == [anonymous, cli, theirs, mine]  # the API sees all
    monkeypatch.setenv("PEFTLAB_SHARE_JOBS", "1")
    assert len(hub.on_refresh(None, BROWSER_2, profile("alice")).choices) == 4  # a server that shares

    adapter = str(mine / "adapter")
    assert default_repo("", adapter, "alice") == f"alice/{mine.name}"
    assert default_repo("my-lora", adapter, "alice") == "alice/my-lora"
    assert default_repo("peftlab-org/x", adapter, "alice") == "peftlab-org/x"
    assert default_repo("my-lora", adapter, None) == "my-lora"  # no login: the repo id as typed


def test_in_a_space_hub_actions_use_only_the_visitors_login(tmp_path, monkeypatch):
    """The Space's own HF_TOKEN is never lent to a visitor who has not logged in."""
    from peftlab.webui.hub_tab import HubTab

    monkeypatch.setenv("HF_TOKEN", "hf_spaceownertoken123")
    hub = HubTab(tmp_path / "runs", store_dir=tmp_path / "store", space=True)
    for said in (
        hub.on_check(""),
        hub.on_push(str(tmp_path), "alice/x", "", False, "", ""),
        hub.on_search("", None, "", "")[0],
        hub.on_pull("alice/x", "")[0],
    ):
        assert said.startswith("**Not logged in.**") and "Sign in with Hugging Face" in said


# --- the Space installed and run ------------------------------------------------------------------------------------


def run_logged(argv: list[str], log: Path, **kwargs) -> float:
    """Run ``argv`` (its output appended to ``log``); the seconds it took; a failure shows the log's end."""
    t0 = time.time()
    with open(log, "ab") as out:
        done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, **kwargs)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed:\n{log.read_text()[-4000:]}")
    return time.time() - t0


def fresh_venv(space: Path, where: Path) -> tuple[Path, dict]:
    """A new virtualenv with the Space installed as a Space installs it (``pip install -r requirements.txt`` in the
    folder). Only torch is shared, from this interpreter's environment (a .pth file naming a folder that links the
    torch distribution): installing its wheel afresh took over a minute of a fresh install's 5-6.5 minutes on this
    2-core machine; everything else is installed from the folder. Returns its python and each step's seconds."""
    log = where / "pip.log"
    times = {"venv": run_logged([sys.executable, "-m", "venv", str(where / "venv")], log)}
    python = where / "venv" / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(site) / "shared-torch.pth").write_text(str(share_torch(where / "shared-torch")) + "\n")
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    times["requirements"] = run_logged([*pip, "-r", "requirements.txt"], log, cwd=space)
    return python, times


def share_torch(folder: Path) -> Path:
    """``folder`` with links to this environment's torch distribution (its packages and its .dist-info, so pip sees
    torch installed); torch's own dependencies are left to pip."""
    from importlib.metadata import distribution

    dist = distribution("torch")
    base = Path(dist.locate_file(""))
    folder.mkdir(parents=True, exist_ok=True)
    for top in sorted({f.parts[0] for f in dist.files or [] if len(f.parts) > 1 and f.parts[0] != ".."}):
        (folder / top).symlink_to(base / top)
    return folder


@contextlib.contextmanager
def serving(python: Path, folder: Path, env: dict, log_file: Path, timeout: float = 300):
    """``python app.py`` in ``folder`` (as a Space starts it) on GRADIO_SERVER_NAME/PORT; yields its URL once it
    answers, and stops it afterwards."""
    url = f"http://{env['GRADIO_SERVER_NAME']}:{env['GRADIO_SERVER_PORT']}"
    with open(log_file, "wb") as log:
        proc = subprocess.Popen([str(python), "app.py"], cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"app.py exited: {log_file.read_text()[-3000:]}")
                try:
                    urllib.request.urlopen(url, timeout=2)
                    break
                except OSError:
                    if time.time() > deadline:
                        raise RuntimeError(f"app.py did not start within {timeout:.0f} s") from None
                    time.sleep(0.5)
            yield url
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.mark.browser
def test_the_space_installs_starts_logs_in_trains_and_pushes(space, hub, tiny_dir, tmp_path):
    """The built folder in a fresh virtualenv, started as a Space starts it (``python app.py`` in the folder, on
    GRADIO_SERVER_NAME/PORT) with SPACE_ID set outside a Space, so gradio mocks the Hugging Face login with the
    profile of HF_TOKEN; HF_ENDPOINT is the local Hub server, which takes the mock's session token as alice's write
    token. In Chromium: sign in, train 3 steps of LoRA on the server's tiny base, push (to alice's namespace, with
    the login's token: HF_TOKEN is read-only, a push with it would fail); another browser sees none of it."""
    from tests.hub_fixture import serve_base
    from tests.hub_server import READ_TOKEN, USER
    from tests.test_browser import CHROMIUM, free_port

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    hub.reset()
    serve_base(hub, tiny_dir)
    hub.add_token(MOCK_TOKEN, USER, "write")
    t0 = time.time()
    python, times = fresh_venv(space, tmp_path)
    installed = time.time() - t0
    runs, home = tmp_path / "runs", tmp_path / "hf_home"
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("HF_", "HUGGING", "PEFTLAB_", "GRADIO_", "TRANSFORMERS_", "VIRTUAL_ENV", "SPACE"))
        and key not in ("PYTHONPATH", "SYSTEM")
    }
    env.update(
        {
            "PATH": f"{python.parent}:{env.get('PATH', '')}",
            "SPACE_ID": f"{USER}/peftlab",  # the app's Space mode; without SYSTEM=spaces gradio mocks the login
            "GRADIO_SERVER_NAME": "127.0.0.1",
            "GRADIO_SERVER_PORT": str(port),
            "PEFTLAB_RUNS": str(runs),
            "PEFTLAB_STORE": str(tmp_path / "store"),
            "HF_ENDPOINT": hub.url,
            "HF_TOKEN": READ_TOKEN,  # the mock's profile comes from whoever this is
            "HF_HOME": str(home),
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "NO_PROXY": "127.0.0.1,localhost",
            "OMP_NUM_THREADS": "1",
        }
    )
    log = tmp_path / "app.log"
    built = {f: f.stat().st_mtime for f in space.rglob("*") if f.is_file()}  # (its README names the mock token)
    t1 = time.time()
    try:
        with serving(python, space, env, log) as url:
            started = time.time() - t1
            timings = drive(url, python, env, hub, runs, tmp_path / "space.png")
    finally:
        hub.tokens.pop(MOCK_TOKEN, None)
    written = [space, *(p for p in tmp_path.iterdir() if p.name not in ("venv", "shared-torch"))]  # runs, logs, HF_HOME
    for f in (f for top in written for f in ([top] if top.is_file() else top.rglob("*"))):
        if f.is_file() and built.get(f) != f.stat().st_mtime:  # what the app wrote or changed
            data = f.read_bytes()
            assert MOCK_TOKEN.encode() not in data and READ_TOKEN.encode() not in data, f"a token was written to {f}"
    print(
        f"\nfresh virtualenv: {installed:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in times.items())}); "
        f"app started in {started:.0f} s; 3 steps trained in {timings['trained']:.0f} s; {tmp_path / 'space.png'}"
    )


def drive(url: str, python: Path, env: dict, hub, runs: Path, shot: Path) -> dict:
    """Sign in, train, push in one browser; another browser sees none of it. Returns timings."""
    from playwright.sync_api import sync_playwright

    from tests.hub_fixture import BASE
    from tests.hub_server import USER
    from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, md, pick, set_number, wait_js

    found = subprocess.run(
        [str(python), "-c", "from peftlab.models import gguf_path; print(gguf_path())"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert found.returncode == 0 and found.stdout.strip().endswith(".gguf"), found.stderr  # the offline default
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            pg = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            pg.set_default_timeout(120_000)
            pg.goto(url)
            pg.click("#tab-hub-button")
            with pg.expect_navigation(url=url + "/"):  # gradio's mock: /login/huggingface → /login/callback → back
                pg.click("#hub-login")
            pg.click("#tab-hub-button")
            pg.wait_for_function(f"(document.querySelector('#hub-login') || {{}}).innerText?.includes({USER!r})")
            pg.click("#hub-check")
            wait_js(pg, f"MD('hub-account').startsWith('Logged in as {USER}')")
            assert "the Hugging Face login" in md(pg, "hub-account")

            pg.click("#tab-train-button")
            pg.fill("#train-base textarea", BASE)
            pick(pg, "train-dataset", "capitals-json")
            for name, value in (("max_steps", 3), ("batch_size", 2), ("max_length", 96)):
                set_number(pg, f"train-{name}", value)
            pg.click("#train-more")
            set_number(pg, "train-max_eval_samples", 2)
            t0 = time.time()
            pg.click("#train-start")
            wait_js(pg, "/^(Done|Failed)/.test(MD('train-status'))", timeout=300_000)
            assert md(pg, "train-status").startswith("Done"), md(pg, "train-status")
            trained = time.time() - t0
            (run,) = [r for r in runs.iterdir() if r.is_dir()]
            assert Job.load(run).owner == f"hf:{USER}"  # the login owns the job

            pg.click("#tab-hub-button")
            pg.wait_for_function(f"document.querySelector('#hub-push-adapter input').value.startsWith({run.name!r})")
            pg.click("#hub-push")  # the repo box left empty: the user's namespace, the run's name
            wait_js(pg, "MD('hub-push-status').startsWith('Pushed to')")
            repo = f"{USER}/{run.name}"
            assert repo in md(pg, "hub-push-status")
            pushed = hub.repo(repo)
            assert "adapter_model.safetensors" in pushed.commits[pushed.branches["main"]].files
            pg.screenshot(path=str(shot), full_page=True)

            other = browser.new_context().new_page()  # another visitor, not logged in: none of it is theirs
            other.set_default_timeout(120_000)
            other.goto(url)
            other.wait_for_selector("#train-start")
            other.wait_for_timeout(2000)
            assert md(other, "train-status").startswith("No job running")
            other.click("#tab-hub-button")
            other.wait_for_timeout(1500)
            assert not other.input_value("#hub-push-adapter input").startswith(run.name)
            other.click("#hub-push")
            wait_js(other, "MD('hub-push-status').length > 0")
            assert md(other, "hub-push-status").startswith("Not logged in")
        finally:
            browser.close()
    return {"trained": trained}
