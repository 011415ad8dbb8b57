"""The web app without a browser: the Blocks it builds, the generated forms, and the pieces behind the widgets."""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr
import pytest
import torch

import peftlab
from peftlab.errors import AdapterError, AdapterMismatchError, ConfigError
from peftlab.generate import generate_text
from peftlab.jobs import Job
from peftlab.schema import FieldSpec, fields_of
from peftlab.train import TrainArgs
from peftlab.webui import build_app, forms
from peftlab.webui.engine import ChatEngine
from peftlab.webui.plots import loss_frame
from peftlab.webui.progress import job_view, progress_line
from peftlab.webui.train_tab import N_OUTPUTS, capability_text, upload_text

ALICE, BOB = "a" * 32, "b" * 32  # browser owner ids of the form the server issues (uuid4().hex)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> gr.Blocks:
    return build_app(tmp_path_factory.mktemp("runs"))


def by_elem_id(demo: gr.Blocks) -> dict[str, gr.blocks.Block]:
    return {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}


def descendants(block) -> list:
    out = []
    for child in getattr(block, "children", []):
        out += [child, *descendants(child)]
    return out


def test_method_dropdown_lists_every_installed_method(demo):
    dropdown = by_elem_id(demo)["train-method"]
    assert isinstance(dropdown, gr.Dropdown)
    assert [value for _, value in dropdown.choices] == [m.name for m in peftlab.methods()]
    assert dropdown.value in [m.name for m in peftlab.methods()]


def test_each_method_form_has_one_widget_per_config_field(demo):
    ids = by_elem_id(demo)
    for m in peftlab.methods():
        specs = m.config_class.fields()
        group = ids[f"method-form-{m.name}"]
        inside = [b for b in descendants(group) if isinstance(b, gr.components.Component)]
        assert [b.elem_id for b in inside] == [f"cfg-{m.name}-{s.name}" for s in specs], m.name
        for spec, widget in zip(specs, inside):
            assert widget.label == spec.name
            if spec.kind == "bool":
                assert isinstance(widget, gr.Checkbox) and widget.value == bool(spec.default)
            elif spec.kind in ("int", "float") and not spec.optional:
                assert isinstance(widget, gr.Number) and widget.value == spec.default
            elif spec.kind == "choice":
                assert isinstance(widget, gr.Dropdown)
                assert {v for _, v in widget.choices} >= {str(c) for c in spec.choices}
            else:
                assert isinstance(widget, gr.Textbox)
    assert demo.peftlab_train.forms.keys() == {m.name for m in peftlab.methods()}


def test_switching_method_shows_only_its_form(demo):
    tab = demo.peftlab_train
    method = tab.method
    fn = next(f for f in demo.fns.values() if (method._id, "change") in [(t[0], t[1]) for t in f.targets])
    names = [m.name for m in peftlab.methods()]
    for name in names:
        updates = fn.fn(name)
        visible = [u.visible for u in updates[-len(names) :]]
        assert visible == [n == name for n in names]
        assert f"**{name}**" in updates[0]


def test_trainer_settings_form_comes_from_trainargs(demo):
    ids = by_elem_id(demo)
    for spec in forms.train_specs():
        assert f"train-{spec.name}" in ids
    assert "train-output_dir" not in ids and "train-method_config" not in ids  # the app sets those itself
    assert forms.train_specs() == [s for s in fields_of(TrainArgs) if s.name not in forms.SKIP_TRAIN_FIELDS]
    tab = demo.peftlab_train
    assert forms.changed_flags(tab.train_specs, [w.value for w in tab.train_widgets]) == {}  # untouched: defaults
    lr = next(s for s in forms.train_specs() if s.name == "learning_rate")
    assert forms.changed_flags([lr], [""]) == {}  # empty = the method's default
    steps = next(s for s in forms.train_specs() if s.name == "max_steps")
    flags = forms.changed_flags([steps, lr], [6.0, "0.01"])
    assert flags == {"max_steps": "6", "learning_rate": "0.01"}
    args = TrainArgs.from_strings(flags)  # what `peftlab train --max-steps 6 --learning-rate 0.01` builds
    assert args.max_steps == 6 and isinstance(args.max_steps, int) and args.learning_rate == 0.01
    with pytest.raises(ConfigError, match="learning_rate"):
        TrainArgs.from_strings(forms.changed_flags([lr], ["fast"]))
    with pytest.raises(ConfigError, match="max_steps"):  # TrainArgs.__post_init__ is the one check
        TrainArgs.from_strings(forms.changed_flags([steps], [0]))


def test_start_shows_the_trainers_own_errors(demo, tmp_path):
    """Start hands the form to jobs.start_job; a bad setting is refused there, by the schema's checks."""
    tab = demo.peftlab_train
    values = {
        tab.method: "lora",
        tab.inputs["base"]: "",
        tab.inputs["dataset"]: "capitals-json",
        tab.inputs["upload"]: None,
        **{w: w.value for ws in tab.forms.values() for w in ws},
        **{w: w.value for w in tab.train_widgets},
    }
    name, settings, flags = tab.read_form(values)
    assert (name, flags) == ("lora", {}) and settings == {"dataset": "capitals-json", "base_model": None}
    r = tab.forms["lora"][[s.name for s in tab.specs["lora"]].index("r")]
    steps = tab.train_widgets[[s.name for s in tab.train_specs].index("max_steps")]
    for bad, match in (
        ({r: 0}, "r must be a positive integer"),
        ({steps: 0}, "max_steps"),
        ({tab.inputs["upload"]: str(tmp_path / "missing.jsonl")}, r"missing\.jsonl"),
    ):
        with pytest.raises(gr.Error, match=match):
            tab.on_start({**values, **bad})
    assert not list(tab.runs_dir.iterdir())  # nothing was started


def test_changed_flags_sends_only_edited_fields(demo):
    specs = peftlab.get_method("lora").config_class.fields()
    initial = [w.value for w in demo.peftlab_train.forms["lora"]]  # what the untouched widgets hold
    assert forms.changed_flags(specs, initial) == {}
    edited = list(initial)
    edited[[s.name for s in specs].index("r")] = 4
    edited[[s.name for s in specs].index("target_modules")] = "q_proj, k_proj"
    flags = forms.changed_flags(specs, edited)
    assert flags == {"r": "4", "target_modules": "q_proj, k_proj"}
    config = peftlab.get_method("lora").config_class.from_strings(flags)  # what the CLI does with them
    assert config.r == 4 and list(config.target_modules) == ["q_proj", "k_proj"]
    for m in peftlab.methods():  # every method's untouched form gives a valid (default) config
        untouched = forms.changed_flags(m.config_class.fields(), [w.value for w in demo.peftlab_train.forms[m.name]])
        assert untouched == {}, m.name
    optional = FieldSpec("bottleneck_size", "int", 8, "", True)
    assert forms.changed_flags([optional], [""]) == {"bottleneck_size": "none"}
    required = FieldSpec("r", "int", 8, "", False)
    assert forms.changed_flags([required], [None]) == {}


def test_capabilities_drive_the_method_text():
    for m in peftlab.methods():
        text = capability_text(m)
        if m.capabilities.mergeable:
            assert "mergeable: yes" in text
        else:
            assert f"mergeable: no — {m.capabilities.merge_note or 'the method says so'}" in text


def test_upload_is_validated_with_a_clear_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{not json\n')
    text = upload_text(str(bad))
    assert text.startswith("**This file cannot be used:**") and "bad.jsonl" in text
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"prompt": f"q{i}", "response": f"a{i}"}) + "\n" for i in range(5)))
    assert "5 rows" in upload_text(str(good))


def test_progress_text_and_loss_frame():
    events = [{"event": "status", "message": "loading base model"}]
    assert "loading base model" in progress_line(events)
    events += [
        {"event": "start", "steps": 6, "trainable": 1000, "total": 100000, "percent": 1.0},
        {"event": "eval", "step": 0, "eval_loss": 2.5},
        {"event": "step", "step": 1, "loss": 2.25, "tokens_per_s": 99.4, "eta_s": 65, "lr": 1e-3},
    ]
    assert progress_line(events) == "step 1 / 6 · loss 2.2500 · eval loss 2.5000 · 99 tokens/s · ETA 1:05"
    frame = loss_frame(events)
    assert frame.to_dict("records") == [
        {"step": 0, "loss": 2.5, "series": "eval"},
        {"step": 1, "loss": 2.25, "series": "train"},
    ]
    only_eval = loss_frame(events[:3])  # every series has a row from the first point on (no loss: draws nothing)
    assert list(only_eval["series"]) == ["eval", "train"] and only_eval["loss"].isna().tolist() == [False, True]
    empty = loss_frame([])
    assert str(empty["step"].dtype) == "int64" and str(empty["loss"].dtype) == "float64"


def test_job_view_of_a_finished_job(tmp_path):
    job = Job(tmp_path, 1, [], "lora", status="stopped", message="stopped at step 3; adapter saved to x")
    (tmp_path / "progress.jsonl").write_text(
        json.dumps(
            {"event": "start", "steps": 9, "trainable": 10, "total": 1000, "percent": 1.0, "learning_rate": 2e-3}
        )
        + "\n"
    )
    view = job_view(job)
    assert not view.running and view.status.startswith("**Stopped**") and "step 3" in view.status
    assert "**10** of 1,000 (**1.000 %**)" in view.params
    assert job_view(None).status.startswith("No job running")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """A tiny llama base folder (a small local tokenizer is not needed: SmolLM2's, vocab matched)."""
    from peftlab.models import load_tokenizer, tiny_model

    folder = tmp_path_factory.mktemp("tiny")
    tok = load_tokenizer(None)
    tiny_model(vocab_size=len(tok)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def make_adapter(base: Path, out: Path, seed: int) -> Path:
    from peftlab.models import load_model

    model, _ = load_model(str(base), device="cpu")
    torch.manual_seed(seed)
    peftlab.add_adapter(model, "lora", {"r": 4, "init_lora_weights": False}, "a")  # random B: changes outputs
    with torch.no_grad():
        for p in peftlab.adapter_parameters(model, "a").values():
            p.mul_(20)  # large enough that greedy tokens differ from the base model's
    return peftlab.save_adapter(model, out, "a")


def test_chat_engine_streams_base_and_adapted_in_their_columns(tiny_folder, tmp_path):
    engine = ChatEngine()
    path = make_adapter(tiny_folder, tmp_path / "a1", seed=1)
    loaded = engine.load(path)
    assert engine.load(path) is loaded  # loaded once, then reused
    model, tok = engine.model, engine.tokenizer
    pairs = list(engine.stream(loaded, "Capital of France?", max_new_tokens=6))
    assert len(pairs) >= 2 and all(len(p) == 2 for p in pairs)
    base, adapted = pairs[-1]
    assert base.strip() == generate_text(model, tok, "Capital of France?", max_new_tokens=6, adapter=None)
    assert adapted.strip() == generate_text(model, tok, "Capital of France?", max_new_tokens=6, adapter=loaded.name)
    assert base != adapted

    other = engine.load(make_adapter(tiny_folder, tmp_path / "a2", seed=2))
    assert other.name != loaded.name and engine.model is model  # same base: no reload, both stay loaded
    assert set(peftlab.adapter_state(model).adapters) >= {loaded.name, other.name}


def test_chat_engine_keeps_each_side_s_conversation_and_samples_when_asked(tiny_folder, tmp_path):
    from peftlab.generate import Sampling
    from peftlab.webui.chat_tab import conversation

    engine = ChatEngine()
    loaded = engine.load(make_adapter(tiny_folder, tmp_path / "a3", seed=3))
    model, tok = engine.model, engine.tokenizer
    first_base, first_adapted = list(engine.stream(loaded, "Capital of France?", max_new_tokens=5))[-1]
    # the second turn: each side sends its own earlier reply, after a system prompt
    base_hist = [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": first_base}]
    adapted_hist = [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": first_adapted}]
    base_msgs = conversation("Be brief.", base_hist, "And of Spain?")
    adapted_msgs = conversation("Be brief.", adapted_hist, "And of Spain?")
    assert [m["role"] for m in base_msgs] == ["system", "user", "assistant", "user"]
    assert base_msgs[2]["content"] == first_base and adapted_msgs[2]["content"] == first_adapted
    base, adapted = list(engine.stream(loaded, adapted_msgs, 5, base_message=base_msgs))[-1]
    assert base.strip() == generate_text(model, tok, base_msgs, max_new_tokens=5, adapter=None)
    assert adapted.strip() == generate_text(model, tok, adapted_msgs, max_new_tokens=5, adapter=loaded.name)

    hot = Sampling(temperature=1.5, top_p=1.0)
    draws = {list(engine.stream(loaded, "Capital of France?", 6, sampling=hot))[-1] for _ in range(4)}
    assert len(draws) > 1  # sampled: the replies vary
    greedy = {list(engine.stream(loaded, "Capital of France?", 6))[-1] for _ in range(2)}
    assert len(greedy) == 1


def test_sampling_top_p_keeps_the_nucleus_and_is_checked():
    from peftlab.generate import Sampling

    logits = torch.tensor([[5.0, 4.0, -10.0, -10.0]])
    picks = {int(Sampling(1.0, 0.5, seed=s).pick(logits, torch.Generator().manual_seed(s))) for s in range(20)}
    assert picks == {0}  # token 0 alone holds over half the mass: the nucleus is {0}
    picks = {int(Sampling(1.0, 0.99).pick(logits, torch.Generator().manual_seed(s))) for s in range(40)}
    assert picks == {0, 1}  # tokens 2 and 3 are outside the 99% nucleus
    assert int(Sampling().pick(logits)) == 0
    with pytest.raises(ValueError, match="top_p"):
        Sampling(1.0, 0.0)
    with pytest.raises(ValueError, match="temperature"):
        Sampling(-1.0)


def test_chat_engine_errors_are_clear(tiny_folder, tmp_path):
    from peftlab.models import load_tokenizer, tiny_model

    engine = ChatEngine()
    with pytest.raises(AdapterError, match="does not exist"):
        engine.load(tmp_path / "nowhere")
    other_base = tmp_path / "other-base"  # another vocabulary size: the adapter does not fit it
    tiny_model(vocab_size=512).save_pretrained(other_base)
    load_tokenizer(None).save_pretrained(other_base)
    path = make_adapter(tiny_folder, tmp_path / "a", seed=0)
    with pytest.raises(AdapterMismatchError, match="another base model"):
        engine.load(path, base=str(other_base))
    assert engine.load(path).name  # the engine recovers and loads it on its own base


def test_chat_engine_shows_the_nearest_tokens_of_a_soft_prompt(tiny_folder, tmp_path):
    """A soft prompt set to the embeddings of known words reads back as those words; LoRA has no soft prompt."""
    from peftlab.models import load_model
    from peftlab.webui.chat_tab import nearest_markdown

    model, tok = load_model(str(tiny_folder), device="cpu")
    words = [tok.encode(w, add_special_tokens=False)[0] for w in (" Paris", " Vienna", " Rome")]
    peftlab.add_adapter(model, "prompt_tuning", {"num_virtual_tokens": 3}, "p")
    with torch.no_grad():
        prompt = model.peftlab_prompt_encoder["p"].embedding.weight
        prompt.copy_(model.get_input_embeddings().weight[words] * 3)  # cosine ignores the scale
    folder = peftlab.save_adapter(model, tmp_path / "pt", "p")

    engine = ChatEngine()
    rows = engine.nearest_tokens(engine.load(folder), top_k=2)
    assert [row[0][0] for row in rows] == [tok.decode([i]) for i in words]
    assert all(abs(row[0][1] - 1.0) < 1e-4 and row[1][1] < row[0][1] for row in rows)
    table = nearest_markdown(rows)
    assert table.count("\n| ") == 4 and "| 0 | `Paris` 1.00" in table  # the header and one row per token
    assert engine.nearest_tokens(engine.load(make_adapter(tiny_folder, tmp_path / "lora", seed=0))) is None
    assert nearest_markdown(None) == ""


def test_train_tab_shows_and_stops_only_its_browsers_jobs(demo, tmp_path, monkeypatch):
    """The tab passes the browser's owner id to the jobs: a reload (on_load) reattaches to its own job, queued
    or running, and another browser neither sees it nor stops it."""
    import subprocess
    import sys

    monkeypatch.setenv("PEFTLAB_MAX_JOBS", "1")
    monkeypatch.delenv("PEFTLAB_SHARE_JOBS", raising=False)
    tab = demo.peftlab_train
    runs = tmp_path / "runs"
    monkeypatch.setattr(tab, "runs_dir", runs)
    busy, waiting = runs / "20240101-000000-lora", runs / "20240101-000001-lora"
    busy.mkdir(parents=True)
    waiting.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", str(busy)])  # "training"
    try:
        Job(busy, sleeper.pid, [], "lora", owner=BOB).save()
        Job(waiting, 0, [], "lora", "queued", owner=ALICE, queued=1.0).save()

        n = N_OUTPUTS  # then the owner id, then the form's widgets
        out = tab.on_load(ALICE)
        assert out[0] == str(waiting) and out[2].startswith("**Queued**") and "place **1**" in out[2]
        assert out[n] == ALICE and out[8].interactive  # Stop takes it off the queue
        out = tab.on_load(BOB)
        assert out[0] == str(busy) and out[2].startswith("**Running**") and out[n] == BOB
        out = tab.on_load("")  # a new browser: a new owner id, and nothing to reattach to
        assert len(out[n]) == 32 and all(isinstance(o, type(gr.skip())) for o in out[:n] + out[n + 1 :])

        assert tab.on_poll(str(waiting), -1, BOB)[2].startswith("No job running")  # not bob's: not shown
        assert tab.on_stop(str(busy), ALICE)[2] == "Nothing to stop."
        assert sleeper.poll() is None  # alice could not stop bob's job
        out = tab.on_stop(str(waiting), ALICE)
        assert out[2].startswith("**Stopped**") and "queue" in out[2]
        assert Job.load(waiting).status == "stopped"
    finally:
        sleeper.kill()
        sleeper.wait()


def test_loss_chart_draws_train_as_a_line_and_eval_as_points_on_whole_steps():
    from peftlab.webui.plots import COLORS, loss_chart

    assert loss_chart([]) is None and loss_chart([{"event": "status", "message": "loading"}]) is None
    events = [
        {"event": "eval", "step": 0, "eval_loss": 2.5},
        {"event": "step", "step": 1, "loss": 2.25},
        {"event": "step", "step": 2, "loss": 2.0},
        {"event": "eval", "step": 2, "eval_loss": 2.1},
    ]
    spec = loss_chart(events).to_dict()
    train, evals = spec["layer"]
    assert train["mark"]["type"] == "line" and "train" in train["transform"][0]["filter"]
    assert evals["mark"]["type"] == "point" and "eval" in evals["transform"][0]["filter"]  # never a joined line
    x = train["encoding"]["x"]
    assert x["axis"] == {"format": "d", "tickMinStep": 1, "values": [0, 1, 2]} and x["title"] == "step"
    assert x["scale"]["domain"] == [0, 2] and train["encoding"]["y"]["title"] == "loss"
    assert train["encoding"]["color"]["scale"]["range"] == list(COLORS.values())
    rows = next(iter(spec["datasets"].values()))
    assert sorted((r["series"], r["step"], r["loss"]) for r in rows) == [
        ("eval", 0, 2.5),
        ("eval", 2, 2.1),
        ("train", 1, 2.25),
        ("train", 2, 2.0),
    ]
    one = loss_chart(events[:1]).to_dict()  # a single eval point still spans a step, so it is drawn
    assert one["layer"][0]["encoding"]["x"]["scale"]["domain"] == [0, 1]


def test_train_form_round_trips_through_saved_settings_and_a_running_job(demo, tmp_path, monkeypatch):
    """What the form sends comes back into it: from a saved settings file, and from a job's job.json when a
    page reloads while it runs (the form shows the running job's settings, not the defaults)."""
    import subprocess
    import sys

    from peftlab.webui.train_tab import command_line, preview_frame, progress_bar

    tab = demo.peftlab_train
    monkeypatch.setattr(tab, "runs_dir", tmp_path / "runs")
    values = {w: getattr(w, "value", None) for w in tab.form_widgets}
    values[tab.inputs["upload"]] = None
    values[tab.owner] = ALICE
    ids = {w.elem_id: w for w in tab.form_widgets}
    values[tab.method] = "lora"
    values[ids["train-max_steps"]] = 10
    values[ids["train-learning_rate"]] = "0.005"
    values[ids["cfg-lora-r"]] = 4
    values[tab.run_name] = "ten-steps"
    name, settings, flags = tab.read_form(values)
    assert (name, settings["max_steps"], settings["learning_rate"], flags) == ("lora", "10", "0.005", {"r": "4"})

    saved = json.loads(Path(tab.on_save_settings(values)).read_text())
    assert saved["name"] == "ten-steps" and saved["flags"] == {"r": "4"}
    filled = dict(zip(tab.form_widgets, tab.on_load_settings(tab.on_save_settings(values)), strict=True))
    assert filled[ids["train-max_steps"]] == 10 and filled[ids["train-learning_rate"]] == "0.005"
    assert filled[ids["cfg-lora-r"]] == 4 and filled[tab.run_name] == "ten-steps" and filled[tab.method] == "lora"
    assert filled[ids["train-batch_size"]] == forms.widget_value(
        next(s for s in tab.train_specs if s.name == "batch_size"), None
    )  # not in the file: the default
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(gr.Error, match="not a peftlab settings file"):
        tab.on_load_settings(str(bad))

    cmd = tab.on_command(values)
    assert cmd.startswith("peftlab train --method lora") and "--max-steps 10" in cmd and "--r 4" in cmd
    assert "ten-steps" in cmd and cmd == command_line(name, settings, flags, tab.runs_dir / "ten-steps")

    run = tmp_path / "runs" / "ten-steps"
    run.mkdir(parents=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", str(run)])
    try:
        Job(
            run, sleeper.pid, [], "lora", owner=ALICE, form={"method": name, "settings": settings, "flags": flags}
        ).save()
        out = tab.on_load(ALICE)
        shown = dict(zip(tab.form_widgets, out[N_OUTPUTS + 1 :], strict=True))
        assert (
            shown[ids["train-max_steps"]] == 10 and shown[ids["cfg-lora-r"]] == 4 and shown[tab.run_name] == "ten-steps"
        )
    finally:
        sleeper.kill()
        sleeper.wait()

    frame = preview_frame("capitals-json", None)
    assert len(frame) == 5 and "messages" in frame.columns or "prompt" in frame.columns
    assert progress_bar([]) == ""
    events = [{"event": "start", "steps": 8}, {"event": "step", "step": 2, "loss": 1.0}]
    assert 'value="25"' in progress_bar(events)


def test_pickers_offer_this_sessions_runs_and_a_logins(tmp_path, monkeypatch):
    """Kept apart (PEFTLAB_SHARE_JOBS=0), the Chat/Evaluate/Compose pickers list the runs of this browser and of its
    Hugging Face login, plus CLI runs (no owner); shared, every run."""
    from types import SimpleNamespace

    from peftlab.webui.adapters import adapter_choices, viewer

    monkeypatch.setenv("PEFTLAB_SHARE_JOBS", "0")
    runs = tmp_path / "runs"
    for name, owner in (("mine", ALICE), ("theirs", BOB), ("login", "hf:alice"), ("cli", None)):
        (runs / name / "adapter").mkdir(parents=True)
        (runs / name / "adapter" / "adapter_config.json").write_text("{}")
        if owner is not None:
            Job(runs / name, 0, [], "lora", status="done", owner=owner).save()

    def names(owners):
        return {Path(v).parent.name for _, v in adapter_choices(runs, tmp_path / "store", owners)}

    assert viewer(ALICE) == [ALICE]
    assert viewer(ALICE, SimpleNamespace(username="alice")) == ["hf:alice", ALICE]
    assert names(viewer(ALICE)) == {"mine", "cli"}
    assert names(viewer(ALICE, SimpleNamespace(username="alice"))) == {"mine", "login", "cli"}
    assert names([None]) == {"mine", "theirs", "login", "cli"}  # the API: everything
    monkeypatch.setenv("PEFTLAB_SHARE_JOBS", "1")
    assert names(viewer(BOB)) == {"mine", "theirs", "login", "cli"}
