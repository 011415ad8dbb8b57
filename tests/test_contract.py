"""The plugin contract in one place: every hook and declaration is documented, tested, and checked at registration;
the guide's example is the real third-party plugin and runs as pasted."""

from __future__ import annotations

import inspect
import re
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import peftlab
from peftlab import Capabilities, Method, MethodConfig, hookimpl, hookspecs, option
from peftlab.errors import PluginConflictError
from peftlab.models import tiny_model
from peftlab.plugins import METHOD_HOOKS, Registry, registry
from peftlab.testing import check_method

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "core" / "docs" / "writing-a-plugin.md"
SCALE = ROOT / "tests" / "thirdparty_plugin" / "peftlab_scale" / "__init__.py"


def _test_sources() -> str:
    return "".join(
        f.read_text() for folder in (ROOT / "tests", ROOT / "plugins", ROOT / "hub") for f in folder.rglob("test_*.py")
    )


def _live_hooks() -> dict[str, list[str]]:
    """``{hook name: argument names}`` from the live plugin manager (not from a list kept by hand)."""
    pm = registry().pm
    return {
        name: list(caller.spec.argnames)
        for name, caller in vars(pm.hook).items()
        if not name.startswith("_") and getattr(caller, "spec", None) is not None
    }


def test_every_hook_is_documented_with_its_signature_and_has_a_test_named_after_it():
    """datasette's rule, on the live plugin manager: a docstring, the exact signature in the guide, a test."""
    hooks = _live_hooks()
    assert {"inject", "trainable_params", "save", "load", "merge", "register_methods"} <= set(hooks)
    assert set(hooks) == {"register_methods", *METHOD_HOOKS}, "plugins.METHOD_HOOKS follows hookspecs.py"
    guide, tests = GUIDE.read_text(), _test_sources()
    for name, args in hooks.items():
        spec = getattr(hookspecs, name)
        assert spec.__doc__ and len(spec.__doc__.strip()) > 40, f"hook {name} needs a docstring in hookspecs.py"
        assert list(inspect.signature(spec).parameters) == args
        signature = f"`{name}({', '.join(args)})`"
        assert signature in guide, f"the plugin guide's reference must show {signature}"
        assert re.search(rf"def test_(\w*_)?{name}_\w*\(", tests), f"no test named after hook {name}"


def test_every_declaration_is_documented_typed_and_has_a_test_named_after_it():
    """What core reads from a method object is ``hookspecs.ATTRIBUTES``, declared on ``Method`` with that type."""
    declared = {k: v for k, v in Method.__annotations__.items()}
    assert set(declared) == set(hookspecs.ATTRIBUTES), "Method declares exactly the attributes hookspecs documents"
    guide, tests = GUIDE.read_text(), _test_sources()
    hints = typing.get_type_hints(Method)
    for name, (type_text, doc) in hookspecs.ATTRIBUTES.items():
        assert declared[name] == type_text, f"Method.{name} is annotated {declared[name]}, hookspecs says {type_text}"
        assert name in hints and hasattr(Method, name), f"Method must give {name} a default"
        assert len(doc) > 30, f"declaration {name} needs a description in hookspecs.ATTRIBUTES"
        assert f"`{name}: {type_text}`" in guide, f"the plugin guide's reference must show `{name}: {type_text}`"
        assert re.search(rf"def test_attribute_{name}\w*\(", tests), f"no test named after declaration {name}"


def test_core_reads_no_undeclared_attribute_of_a_method():
    """MethodHandle reads a method's declarations through one function, with Method's defaults."""
    src = (ROOT / "core" / "peftlab" / "plugins.py").read_text()
    read = set(re.findall(r'_declared\(self\.obj, "(\w+)"\)', src))
    assert read == set(hookspecs.ATTRIBUTES)
    assert "getattr(self.obj" not in src


# --- the guide's example -----------------------------------------------------------------------------------


def _guide_module() -> str:
    blocks = re.findall(r"```python peftlab_scale/__init__\.py\n(.*?)```", GUIDE.read_text(), flags=re.S)
    assert len(blocks) >= 3, "the guide shows the plugin module in marked blocks"
    return "\n\n".join(b.strip("\n") for b in blocks) + "\n"


def _norm(text: str) -> str:
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def test_the_guides_example_is_the_installed_third_party_plugin():
    """The blocks of the guide, pasted in order, are tests/thirdparty_plugin's module (which the suite installs)."""
    assert _norm(_guide_module()) == _norm(SCALE.read_text())


def test_the_guides_example_runs_as_pasted_and_passes_the_kit(tmp_path, monkeypatch):
    module = types.ModuleType("pasted_scale")
    monkeypatch.setitem(sys.modules, "pasted_scale", module)  # dataclasses look their module up
    exec(compile(_guide_module(), "writing-a-plugin.md", "exec"), module.__dict__)  # noqa: S102 - our own doc
    reg = registry()
    module.Scale.name = "pasted_scale"  # not to clash with an installed peftlab-scale
    try:
        reg.add_plugin(module, name="pasted-scale")
        report = check_method(
            "pasted_scale",
            {"target_modules": ["v_proj", "o_proj", "up_proj", "down_proj"]},
            lr=0.3,
            steps=40,
            tmp_path=tmp_path,
        )
    finally:
        for obj in [p for p in reg.pm.get_plugins() if isinstance(p, module.Scale)]:
            reg.pm.unregister(obj)
        reg.methods.pop("pasted_scale", None)
    assert report["loss_last"] < report["loss_first"] * 0.9
    assert report["merge_max_diff"] < 1e-4 and report["mixed_batch_max_diff"] < 1e-4


# --- each declaration, checked at registration and acted on --------------------------------------------------


@dataclass
class OneConfig(MethodConfig):
    size: int = option(3, help="vector size")


class One(Method):
    """A minimal valid method: one vector parameter on the model."""

    name = "one"
    config_class = OneConfig
    peft_type = "ONE"

    @hookimpl
    def inject(self, model, config, adapter_name):
        model.one_vec = torch.nn.Parameter(torch.zeros(config.size))

    @hookimpl
    def trainable_params(self, model):
        return {"one_vec": model.one_vec}

    def tensor_map(self, model, config, adapter_name):
        return {self.peft_key("", "one_vec"): model.one_vec}


def _register(**declarations) -> Registry:
    reg = Registry()
    reg.add_method(type("Declared", (One,), declarations)(), plugin="test-plugin")
    return reg


def test_attribute_name_must_be_a_nonempty_unique_string():
    with pytest.raises(PluginConflictError, match="without a name"):
        _register(name="")
    reg = _register()
    with pytest.raises(PluginConflictError, match="provided by two plugins: 'test-plugin' and 'other'"):
        reg.add_method(One(), plugin="other")


def test_attribute_config_class_must_be_a_method_config_dataclass():
    with pytest.raises(PluginConflictError, match="config_class must be a MethodConfig dataclass"):
        _register(config_class=dict)
    assert _register().get("one").config_class.fields()[0].name == "size"


def test_attribute_peft_type_is_required_and_written_to_the_adapter_config(tmp_path):
    with pytest.raises(PluginConflictError, match="peft_type must be a non-empty string"):
        _register(peft_type="")
    import json

    model = tiny_model()
    peftlab.add_adapter(model, "lora")
    folder = peftlab.save_adapter(model, tmp_path / "a")
    assert json.loads((folder / "adapter_config.json").read_text())["peft_type"] == "LORA"


def test_attribute_capabilities_must_be_a_capabilities_instance():
    with pytest.raises(PluginConflictError, match="capabilities must be a peftlab.Capabilities"):
        _register(capabilities={"mergeable": True})
    with pytest.raises(PluginConflictError, match="says mergeable but has no merge hook"):
        _register(capabilities=Capabilities(mergeable=True))


def test_attribute_description_is_shown_by_methods_json():
    reg = _register(description="one vector, for tests")
    assert reg.get("one").to_json()["description"] == "one vector, for tests"
    with pytest.raises(PluginConflictError, match="description must be a string"):
        _register(description=None)


def test_attribute_train_defaults_must_name_trainer_settings():
    reg = _register(train_defaults={"learning_rate": 0.5, "batch_size": 2})
    assert reg.get("one").train_defaults == {"learning_rate": 0.5, "batch_size": 2}
    with pytest.raises(PluginConflictError, match=r"train_defaults has \['lr'\], which are not trainer settings"):
        _register(train_defaults={"lr": 0.5})


def test_attribute_module_prefix_builds_peft_keys_and_must_end_with_a_dot():
    assert One().peft_key("model.layers.0.q_proj.base_layer", "bias") == "base_model.model.model.layers.0.q_proj.bias"
    prompt_like = type("P", (One,), {"module_prefix": "base_model."})()
    assert prompt_like.peft_key("score", "weight") == "base_model.score.weight"
    with pytest.raises(PluginConflictError, match="module_prefix must end with '.'"):
        _register(module_prefix="base_model")


def test_claims_peft_config_hook_picks_one_method_for_a_shared_peft_type():
    """prefix tuning and P-Tuning v2 both write PREFIX_TUNING; LoRA and QLoRA both LORA."""
    reg = registry()
    assert reg.for_peft_type("PREFIX_TUNING", {"prefix_projection": True}).name == "prefix_tuning"
    assert reg.for_peft_type("PREFIX_TUNING", {"prefix_projection": False}).name == "p_tuning_v2"
    assert reg.for_peft_type("LORA", {"r": 8}).name == "lora"  # QLoRA's hook declines peft's plain LoRA
    assert not reg.get("qlora").claims({"r": 8}) and reg.get("lora").claims({"r": 8})
    assert not reg.get("lora").claims({"use_dora": True})  # DoRA computes something else
    assert _register().get("one").claims({})  # without the hook a method claims its peft_type


def test_plugin_modules_do_not_reach_into_another_plugins_internals():
    """A plugin imports peftlab's public names and, at most, a plugin it declares as a dependency."""
    for pyproject in (ROOT / "plugins").glob("*/pyproject.toml"):
        text = pyproject.read_text()
        deps = re.search(r"dependencies = \[(.*?)\]", text).group(1)
        allowed = {d.strip().strip('"').split(">")[0].replace("-", "_") for d in deps.split(",")}
        for py in pyproject.parent.glob("peftlab_*/*.py"):
            for mod in re.findall(r"^from (peftlab_\w+)", py.read_text(), flags=re.M):
                assert mod == py.parent.name or mod in allowed, f"{py} imports {mod} without depending on it"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
