"""The plugin contract: entry points, one registration per method, clashes, schema, capabilities."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import peftlab
from peftlab import Capabilities, ConfigError, Method, MethodConfig, MethodError, hookimpl, option
from peftlab.errors import PluginConflictError, UnknownMethodError
from peftlab.models import tiny_model
from peftlab.plugins import Registry, registry

HERE = Path(__file__).parent
ROOT = HERE.parent


@dataclass
class DummyConfig(MethodConfig):
    size: int = option(2, help="a size")


class Recorder(Method):
    """A method whose hooks record calls, so tests can see who gets called."""

    config_class = DummyConfig
    peft_type = "DUMMY"

    def __init__(self, name: str, calls: list, caps: Capabilities = Capabilities()) -> None:
        self.name, self.calls, self.capabilities = name, calls, caps

    @hookimpl
    def inject(self, model, config, adapter_name):
        self.calls.append((self.name, "inject"))
        model.dummy = torch.nn.Parameter(torch.zeros(config.size))

    @hookimpl
    def trainable_params(self, model, adapter_name):
        self.calls.append((self.name, "trainable_params"))
        return {"dummy": model.dummy}

    def tensor_map(self, model, config, adapter_name):
        return {"dummy": model.dummy}


class PluginModule:
    """Stands in for a plugin module: registers the given methods."""

    def __init__(self, *methods):
        self.methods = methods

    def register_methods(self, register):
        for m in self.methods:
            register(m)


def test_register_methods_hook_builtin_lora_is_loaded_through_its_entry_point():
    eps = {ep.name: ep for ep in importlib.metadata.entry_points(group="peftlab")}
    assert "lora" in eps, "the LoRA plugin must be found through the entry-point group like any third party"
    handle = peftlab.get_method("lora")
    assert handle.plugin == "peftlab-lora"
    assert handle.capabilities.mergeable


def test_unknown_method_error_lists_installed_methods():
    with pytest.raises(UnknownMethodError) as e:
        peftlab.get_method("no-such-method")
    assert "no-such-method" in str(e.value) and "lora" in str(e.value)


def test_two_plugins_claiming_one_method_fail_naming_both():
    reg = Registry()
    reg.add_plugin(PluginModule(Recorder("twin", [])), name="plugin-one")
    with pytest.raises(PluginConflictError) as e:
        reg.add_plugin(PluginModule(Recorder("twin", [])), name="plugin-two")
    assert "plugin-one" in str(e.value) and "plugin-two" in str(e.value) and "twin" in str(e.value)


def test_inject_and_trainable_params_hooks_reach_only_the_owning_method():
    calls: list = []
    reg = Registry()
    reg.add_plugin(PluginModule(Recorder("a", calls), Recorder("b", calls)), name="p")
    model = torch.nn.Module()
    reg.get("a").hook("inject")(model=model, config=DummyConfig(), adapter_name="x")
    params = reg.get("b").hook("trainable_params")(model=model, config=DummyConfig(), adapter_name="x")
    assert calls == [("a", "inject"), ("b", "trainable_params")]
    assert set(params) == {"dummy"}  # one result (firstresult), not a list from every plugin


def test_a_method_registered_later_does_not_reach_an_earlier_methods_calls():
    calls: list = []
    reg = Registry()
    reg.add_plugin(PluginModule(Recorder("a", calls)), name="p")
    model = torch.nn.Module()
    reg.get("a").hook("inject")(model=model, config=DummyConfig(), adapter_name="x")  # caller built (and cached)
    reg.add_plugin(PluginModule(Recorder("late", calls)), name="q")
    reg.get("a").hook("inject")(model=model, config=DummyConfig(), adapter_name="x")
    assert calls == [("a", "inject"), ("a", "inject")]


def test_a_method_missing_a_required_hook_is_refused():
    class NoSave(Recorder):
        def tensor_map(self, model, config, adapter_name):  # pragma: no cover - never reached
            raise AssertionError

    class Bare:
        name, config_class, peft_type, capabilities = "bare", DummyConfig, "X", Capabilities()

        @hookimpl
        def inject(self, model, config, adapter_name):
            pass

    reg = Registry()
    with pytest.raises(PluginConflictError, match="does not implement trainable_params, save, load"):
        reg.add_method(Bare(), plugin="p")
    assert "bare" not in reg.methods


def test_a_hook_with_an_unknown_argument_is_refused_at_registration():
    class Typo(Recorder):
        @hookimpl
        def inject(self, model, config, adapter_nmae):  # misspelt argument
            pass

    with pytest.raises(PluginConflictError, match="adapter_nmae"):
        Registry().add_method(Typo("typo", []), plugin="p")


def test_mergeable_without_merge_hook_is_refused():
    with pytest.raises(PluginConflictError, match="mergeable"):
        Registry().add_method(Recorder("m", [], Capabilities(mergeable=True)), plugin="p")


def test_broken_plugin_is_reported_and_others_still_load(monkeypatch):
    real = importlib.metadata.entry_points

    def fake(group=None):
        eps = list(real(group=group))
        return eps + [importlib.metadata.EntryPoint("ghost", "peftlab_no_such_module_xyz", "peftlab")]

    monkeypatch.setattr(importlib.metadata, "entry_points", fake)
    reg = Registry()
    with pytest.warns(UserWarning, match="ghost"):
        reg.load_entry_points()
    assert "lora" in reg.methods and "ghost" in reg.broken
    assert "peftlab_no_such_module_xyz" in reg.broken["ghost"]


# --- config dataclasses are the schema -------------------------------------------------------------


def test_config_fields_generate_the_schema():
    specs = {s.name: s for s in peftlab.get_method("lora").config_class.fields()}
    assert specs["r"].kind == "int" and specs["r"].default == 8 and "Rank" in specs["r"].help
    assert specs["lora_dropout"].kind == "float"
    assert specs["use_rslora"].kind == "bool"
    assert specs["bias"].kind == "choice" and specs["bias"].choices == ["none", "all", "lora_only"]
    assert specs["target_modules"].kind == "list" and specs["target_modules"].optional


def test_config_from_strings_parses_and_validates():
    cls = peftlab.get_method("lora").config_class
    cfg = cls.from_strings({"r": "4", "use_rslora": "true", "target_modules": "q_proj, v_proj"})
    assert cfg.r == 4 and cfg.use_rslora is True and cfg.target_modules == ["q_proj", "v_proj"]
    assert cls.from_strings({"target_modules": "all-linear"}).target_modules == "all-linear"
    with pytest.raises(ConfigError, match="r must be a positive integer"):
        cls.from_strings({"r": "0"})
    with pytest.raises(ConfigError, match="cannot read 'x' as int"):
        cls.from_strings({"r": "x"})
    with pytest.raises(ConfigError, match="no field"):
        cls.from_strings({"rank": "4"})


def test_config_from_dict_refuses_unknown_meaningful_keys():
    cls = peftlab.get_method("lora").config_class
    cfg = cls.from_dict({"r": 4, "peft_type": "LORA", "megatron_core": "megatron.core", "layer_replication": None})
    assert cfg.r == 4
    with pytest.raises(ConfigError, match="use_dora=True"):
        cls.from_dict({"r": 4, "use_dora": True}, source="adapter_config.json")


# --- capabilities drive core ----------------------------------------------------------------------


@pytest.fixture
def temp_method():
    """Register methods into the process registry for one test, then remove them."""
    added = []

    def add(obj):
        registry().add_method(obj, plugin="test-plugin")
        added.append(obj)
        return obj

    yield add
    for obj in added:
        registry().pm.unregister(obj)
        registry().methods.pop(obj.name, None)


def test_merge_refused_for_a_non_mergeable_method_with_its_reason(temp_method):
    temp_method(Recorder("nomerge", [], Capabilities(merge_note="it lives in the KV cache")))
    model = tiny_model()
    peftlab.add_adapter(model, "nomerge")
    with pytest.raises(MethodError, match="cannot be merged: it lives in the KV cache"):
        peftlab.merge_adapter(model)


def test_stacking_refused_when_a_method_says_it_cannot_stack(temp_method):
    temp_method(Recorder("solo", [], Capabilities(stackable=False, stack_note="it owns the whole cache")))
    model = tiny_model()
    peftlab.add_adapter(model, "lora", name="first")
    with pytest.raises(MethodError, match="it owns the whole cache"):
        peftlab.add_adapter(model, "solo", name="second")


def test_task_types_are_enforced(temp_method):
    temp_method(Recorder("lmonly", [], Capabilities(task_types=("CAUSAL_LM",))))
    with pytest.raises(MethodError, match="does not support SEQ_CLS"):
        peftlab.add_adapter(tiny_model(task="SEQ_CLS"), "lmonly")


# --- the third-party path, proven ------------------------------------------------------------------


@pytest.fixture(scope="module")
def thirdparty_site(tmp_path_factory):
    """Install tests/thirdparty_plugin (a package outside the workspace) into a fresh site folder."""
    site = tmp_path_factory.mktemp("site")
    src = tmp_path_factory.mktemp("src") / "plugin"
    shutil.copytree(HERE / "thirdparty_plugin", src)  # build in a copy: no build files in the repo
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(src),
        ],
        check=True,
    )
    return site


def _run_with(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=300)


def test_installed_third_party_plugin_appears_in_methods_and_passes_the_kit(thirdparty_site):
    out = _run_with(thirdparty_site, "-m", "peftlab", "methods", "--json")
    assert out.returncode == 0, out.stderr
    found = {m["name"]: m for m in json.loads(out.stdout)}
    assert "scale" in found and found["scale"]["plugin"] == "peftlab-scale"
    assert found["scale"]["fields"][0]["name"] == "target_modules"
    assert "lora" in found  # the built-in one still there, loaded the same way
    kit = _run_with(
        thirdparty_site,
        "-c",
        "from peftlab.testing import check_method; "
        "cfg = {'target_modules': ['v_proj', 'o_proj', 'up_proj', 'down_proj']}; "
        "r = check_method('scale', cfg, lr=0.3, steps=40); print(r['merge_max_diff'])",
    )
    assert kit.returncode == 0, kit.stderr[-2000:]
    assert float(kit.stdout.strip().splitlines()[-1]) < 1e-4


def test_third_party_plugin_appears_in_the_app_method_list(thirdparty_site):
    pytest.importorskip("gradio")
    script = (
        "import tempfile; from peftlab.webui import build_app; demo = build_app(tempfile.mkdtemp()); "
        "blocks = {b.elem_id: b for b in demo.blocks.values() if getattr(b, 'elem_id', None)}; "
        "print([c[0] for c in blocks['train-method'].choices]); print('cfg-scale-target_modules' in blocks)"
    )
    out = _run_with(thirdparty_site, "-c", script)
    assert out.returncode == 0, out.stderr[-2000:]
    choices, has_form = out.stdout.strip().splitlines()[-2:]
    assert "'scale'" in choices and "'lora'" in choices
    assert has_form == "True", "the app builds a config form for the third-party method"


def test_third_party_plugin_not_visible_without_install():
    out = subprocess.run([sys.executable, "-m", "peftlab", "methods", "--json"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "scale" not in {m["name"] for m in json.loads(out.stdout)}
