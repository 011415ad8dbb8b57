"""The web app between visitors (sessions kept apart, as in a Space): a browser cannot claim another owner, pages open
and offer only their own runs' adapters, comparisons stay their owner's, and the server's Hugging Face token is never
used for a visitor. Handlers are called as gradio calls them, without a browser."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest

from peftlab import jobs
from peftlab.errors import PeftlabError
from peftlab.webui import build_app
from peftlab.webui.adapters import HAS_HUB, adapter_choices, check_folder, locate
from peftlab.webui.compare_tab import CompareTab
from peftlab.webui.compose_tab import ComposeTab
from peftlab.webui.eval_tab import EvalTab
from peftlab.webui.owners import browser_id, page_owner, viewer
from peftlab.webui.runs_tab import RunsTab
from peftlab.webui.train_tab import N_OUTPUTS

ALICE, BOB = "a" * 32, "b" * 32  # browser owner ids of the form the server issues (uuid4().hex)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> gr.Blocks:
    return build_app(tmp_path_factory.mktemp("app-runs"))


@pytest.fixture
def apart(monkeypatch, tmp_path):
    """Sessions kept apart (PEFTLAB_SHARE_JOBS unset, as in a Space) and an empty local adapter store."""
    monkeypatch.delenv("PEFTLAB_SHARE_JOBS", raising=False)
    monkeypatch.setenv("PEFTLAB_STORE", str(tmp_path / "store"))


def make_run(runs: Path, name: str, owner: str | None, status: str = "done") -> Path:
    """A run folder with an adapter (enough for the pickers) and, with an owner, its job.json."""
    (runs / name / "adapter").mkdir(parents=True)
    (runs / name / "adapter" / "adapter_config.json").write_text("{}")
    if owner is not None:
        jobs.Job(runs / name, 0, [], "lora", status, owner=owner, queued=1.0).save()
    return runs / name


def run_names(choices) -> set[str]:
    return {Path(v).parent.name for _, v in choices if Path(v).name == "adapter"}


def handler(demo: gr.Blocks, name: str):
    """The (first) event handler of ``demo`` called ``name`` (the Chat tab's are closures)."""
    return next(f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", None) == name)


def test_a_browser_cannot_claim_a_login_or_an_id_the_server_did_not_issue(demo, apart, tmp_path, monkeypatch):
    """A visitor who sends ``hf:alice`` (a public name) as their browser id is no one: they get a new id, and see,
    stop and delete none of alice's runs or comparisons."""
    runs = tmp_path / "runs"
    run = make_run(runs, "20250101-000000-lora", "hf:alice", status=jobs.QUEUED)
    folder = runs / "compare-20250101-000000"
    folder.mkdir()
    (folder / "compare-job.json").write_text(json.dumps({"pid": 999_999_999, "owner": "hf:alice"}))

    train = demo.peftlab_train
    monkeypatch.setattr(train, "runs_dir", runs)
    out = train.on_load("hf:alice")
    assert isinstance(out[0], type(gr.skip())), "reattached to alice's job"
    assert browser_id(out[N_OUTPUTS]) and out[N_OUTPUTS] != "hf:alice"  # a new id of the server's
    assert train.on_poll(str(run), -1, "hf:alice")[2].startswith("No job running")
    assert train.on_stop(str(run), "hf:alice")[2] == "Nothing to stop."
    assert jobs.Job.load(run).status == jobs.QUEUED

    tab = RunsTab(runs)
    assert list(tab.on_refresh(None, None, "hf:alice")[0]["run"]) == []
    msg, _ = tab.on_delete(run.name, True, "hf:alice")
    assert msg.startswith("**Cannot delete") and run.is_dir()
    assert run_names(adapter_choices(runs, owners=viewer("hf:alice"))) == set()
    assert CompareTab(runs).on_load("hf:alice")[0] == ""

    assert browser_id("hf:alice") == "" and browser_id(ALICE) == ALICE and browser_id(None) == ""
    assert page_owner("hf:alice") is None and viewer("hf:alice") == [""]
    assert page_owner(BOB, SimpleNamespace(username="alice")) == "hf:alice"  # the login itself, checked by gradio


def test_open_in_chat_and_push_offer_only_this_pages_adapters(apart, tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "mine", ALICE)
    make_run(runs, "theirs", BOB)
    tab = RunsTab(runs)
    dropdown, _, tabs, _ = tab.on_chat("mine", ALICE)
    assert dropdown.value == str(runs / "mine" / "adapter") and run_names(dropdown.choices) == {"mine"}
    dropdown, tabs, _ = tab.on_push("mine", ALICE)
    assert tabs.selected == "hub" and run_names(dropdown.choices) == {"mine"}
    if HAS_HUB:
        from peftlab.webui.hub_tab import HubTab

        pulled = str(tmp_path / "store" / "alice--x")
        dropdown, _, _ = HubTab(runs, store_dir=tmp_path / "store").on_open(pulled, ALICE)
        assert dropdown.value == pulled and run_names(dropdown.choices) == {"mine"}


def fake_comparison(runs: Path, owner: str) -> tuple[Path, subprocess.Popen]:
    """A comparison folder whose process ("peftlab.compare" on its command line, its own session) only sleeps."""
    folder = runs / "compare-20250101-000000"
    folder.mkdir(parents=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", "peftlab.compare"], start_new_session=True
    )
    while b"peftlab.compare" not in Path(f"/proc/{proc.pid}/cmdline").read_bytes():  # until it runs its program
        time.sleep(0.01)
    job = {"pid": proc.pid, "methods": ["lora"], "dataset": "capitals-json", "steps": 2, "owner": owner}
    (folder / "compare-job.json").write_text(json.dumps(job))
    return folder, proc


def test_the_compare_tab_shows_and_stops_only_this_pages_comparison(apart, tmp_path):
    folder, proc = fake_comparison(tmp_path, BOB)
    try:
        tab = CompareTab(tmp_path)
        assert tab.on_load("")[0] == "" and tab.on_load(ALICE)[0] == ""  # a page without an owner sees none either
        assert tab.on_load(BOB)[0] == str(folder)
        out = tab.on_stop(str(folder), ALICE)
        assert out[1].startswith("**Cannot stop:**") and "another session" in out[1]
        assert proc.poll() is None
        out = tab.on_start(["lora"], "capitals-json", None, None, "", ALICE)  # an empty Steps box
        assert out[0] == "" and out[1] == "**Cannot start:** give the number of steps per method"
        tab.on_stop(str(folder), BOB)
        assert proc.wait(timeout=30) is not None
    finally:
        proc.kill()
        proc.wait()


def test_folders_outside_this_pages_runs_are_refused_when_kept_apart(demo, apart, tmp_path, monkeypatch):
    """A typed (or sent) adapter folder: this page's runs, runs without an owner and the store are fine; another
    session's run, a hidden one and any other folder on the server are refused with a clear message, before any
    model loads."""
    runs = tmp_path / "runs"
    mine, theirs, cli = make_run(runs, "mine", ALICE), make_run(runs, "theirs", BOB), make_run(runs, "cli", None)
    outside = tmp_path / "outside" / "adapter"
    outside.mkdir(parents=True)
    (runs / "link").symlink_to(theirs)  # a run folder that is another's underneath
    _, _, status, _ = EvalTab(runs).on_evaluate([], str(theirs / "adapter"), "capitals-json", None, 4, 4, ALICE,
                                                progress=None)  # fmt: skip
    assert status.startswith("**Cannot evaluate:**") and "not an adapter of this session's runs" in status
    _, _, status, _ = EvalTab(runs).on_evaluate([str(outside)], "", "capitals-json", None, 4, 4, ALICE, progress=None)
    assert status.startswith("**Cannot evaluate:**") and "can be opened on this server" in status
    if HAS_HUB:
        status, _, _ = ComposeTab(runs).on_sweep([str(mine / "adapter"), str(outside)], "", "capitals-json", 3, ALICE,
                                                 progress=None)  # fmt: skip
        assert status.startswith("**Cannot sweep:**") and "can be opened on this server" in status

    app_runs = demo.peftlab_train.runs_dir  # the Chat tab opens what its own runs folder holds
    other = make_run(app_runs, "bobs-run", BOB)
    text, *_ = handler(demo, "on_pick")(None, str(other / "adapter"), "", ALICE)
    assert "not an adapter of this session's runs" in text
    owners = viewer(ALICE)
    for ok in (mine / "adapter", cli / "adapter"):
        check_folder(str(ok), runs, owners)
    if HAS_HUB:
        (tmp_path / "store" / "kept").mkdir(parents=True)
        check_folder(str(tmp_path / "store" / "kept"), runs, owners)
    for bad in (theirs / "adapter", runs / "link" / "adapter", runs, outside, Path("/")):
        with pytest.raises(PeftlabError, match="this session's runs"):
            check_folder(str(bad), runs, owners)

    monkeypatch.setenv("PEFTLAB_SHARE_JOBS", "1")  # one user's laptop: any folder of theirs
    check_folder(str(theirs / "adapter"), runs, owners)
    check_folder(str(outside), runs, owners)


@pytest.mark.skipif(not HAS_HUB, reason="needs peftlab-hub")
def test_a_hub_id_is_fetched_with_the_visitors_token_never_the_servers(demo, apart, tmp_path, monkeypatch):
    import peftlab_hub

    monkeypatch.setenv("HF_TOKEN", "hf_servertoken123456")
    asked = []

    def resolve_adapter(arg, *, store=None, token=None, base=None, check=True):
        asked.append((arg, token))
        return SimpleNamespace(path=tmp_path / "fetched")

    monkeypatch.setattr(peftlab_hub, "resolve_adapter", resolve_adapter)
    assert locate("alice/public-lora") == str(tmp_path / "fetched")  # no login: anonymous, never the server's
    assert asked == [("alice/public-lora", False)]
    assert locate("alice/private-lora", token="hf_visitor1234567") == str(tmp_path / "fetched")
    assert asked[-1] == ("alice/private-lora", "hf_visitor1234567")
    # the Chat tab hands on the login's own token (gr.OAuthToken)
    handler(demo, "on_pick")(None, "alice/chat-lora", "", ALICE, None, SimpleNamespace(token="hf_visitor1234567"))
    assert asked[-1] == ("alice/chat-lora", "hf_visitor1234567")
    monkeypatch.setenv("PEFTLAB_SHARE_JOBS", "1")  # one user's laptop: their own token is theirs to use
    locate("alice/laptop-lora")
    assert asked[-1] == ("alice/laptop-lora", None)


def test_served_apart_the_app_sends_no_token_it_was_not_handed(monkeypatch):
    """``launch`` on a network address (or in a Space): base models and datasets the app fetches for a visitor go
    without the server's HF_TOKEN; a token handed on purpose still goes."""
    from huggingface_hub import constants
    from huggingface_hub.utils import build_hf_headers

    from peftlab.webui import app as webapp

    monkeypatch.setenv("HF_TOKEN", "hf_servertoken123456")
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", False)
    monkeypatch.delenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", raising=False)
    monkeypatch.delenv("PEFTLAB_SHARE_JOBS", raising=False)
    monkeypatch.delenv("GRADIO_ANALYTICS_ENABLED", raising=False)
    assert build_hf_headers().get("authorization") == "Bearer hf_servertoken123456"  # what a plain process sends
    served = []
    fake = SimpleNamespace(queue=lambda **kw: SimpleNamespace(launch=lambda **kw: served.append(kw)))
    webapp.launch(fake, host="0.0.0.0", port=7999)
    assert served and served[0]["server_name"] == "0.0.0.0"
    assert "authorization" not in build_hf_headers()
    assert build_hf_headers(token="hf_visitor1234567")["authorization"] == "Bearer hf_visitor1234567"


def form_values(tab) -> dict:
    values = {w: getattr(w, "value", None) for w in tab.form_widgets}
    values[tab.inputs["upload"]] = None
    values[tab.owner] = ALICE
    values[tab.method] = "lora"
    return values


def test_a_logged_in_users_job_gets_their_own_token(demo, tmp_path, monkeypatch):
    tab = demo.peftlab_train
    monkeypatch.setattr(tab, "runs_dir", tmp_path / "runs")
    started = {}

    def start_job(runs_dir, method, settings, flags, **kwargs):
        started.update(kwargs)
        return jobs.Job(tmp_path / "runs" / "x", 0, [], method, "done")

    monkeypatch.setattr(jobs, "start_job", start_job)
    tab.on_start(form_values(tab), None, SimpleNamespace(token="hf_visitor1234567"))
    assert started["env"] == {"HF_TOKEN": "hf_visitor1234567"} and started["owner"] == ALICE
    tab.on_start(form_values(tab), None, None)
    assert started["env"] == {}


def test_saved_settings_never_name_a_path_and_bad_files_are_refused(demo, tmp_path):
    import tempfile
    import uuid

    tab = demo.peftlab_train
    values = form_values(tab)
    name = f"peftlab-escaped-{uuid.uuid4().hex[:8]}"
    escaped = Path(tempfile.gettempdir(), f"{name}-settings.json")  # where ../<name> from the settings folder lands
    values[tab.run_name] = f"../{name}"
    try:
        with pytest.raises(gr.Error, match=f"Run name '../{name}'"):
            tab.on_save_settings(values)
        assert not escaped.exists()
    finally:
        escaped.unlink(missing_ok=True)
    values[tab.run_name] = "fine-name"
    assert Path(tab.on_save_settings(values)).name == "fine-name-settings.json"

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"peftlab_settings": 1, "method": "lora", "settings": ["max_steps", 5]}))
    with pytest.raises(gr.Error, match="'settings' must be an object"):
        tab.on_load_settings(str(bad))
