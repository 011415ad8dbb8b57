"""One test per hook: core calls each hook at the right moment, on the owning method only."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import peftlab
from peftlab import Capabilities, Method, MethodConfig, MethodError, hookimpl, option
from peftlab.inspect import nearest_tokens
from peftlab.models import load_model, tiny_model
from peftlab.plugins import registry
from peftlab.train import TrainArgs, train


@dataclass
class SpyConfig(MethodConfig):
    width: int = option(4, help="size of the learned vector")


class Spy(Method):
    """Adds a learned bias to the final norm's output; records every hook call."""

    name = "spy"
    config_class = SpyConfig
    peft_type = "SPY"
    capabilities = Capabilities(mergeable=True)

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    @hookimpl
    def inject(self, model, config, adapter_name):
        self.calls.append(("inject", adapter_name))
        hidden = model.config.hidden_size
        model.spy_vec = torch.nn.Parameter(torch.zeros(hidden))
        model.model.norm.register_forward_hook(lambda m, i, o: o + model.spy_vec)

    @hookimpl
    def trainable_params(self, model, adapter_name):
        self.calls.append(("trainable_params", adapter_name))
        return {"spy_vec": model.spy_vec}

    def tensor_map(self, model, config, adapter_name):
        return {"base_model.model.spy_vec": model.spy_vec}

    @hookimpl
    def merge(self, model, adapter_name):
        self.calls.append(("merge", adapter_name))

    @hookimpl
    def unmerge(self, model, adapter_name):
        self.calls.append(("unmerge", adapter_name))

    @hookimpl
    def extra_loss(self, model, config, adapter_name):
        self.calls.append(("extra_loss", adapter_name))
        return 0.0 * model.spy_vec.sum()

    @hookimpl
    def on_train_step(self, model, adapter_name, step, total_steps):
        self.calls.append(("on_train_step", step, total_steps))

    @hookimpl
    def load_base_model(self, source, config, task, dtype, device):
        self.calls.append(("load_base_model", task, str(dtype)))
        return None  # let core load it normally

    @hookimpl
    def soft_prompt(self, model, config, adapter_name):
        return model.get_input_embeddings().weight[[5, 7, 9]] * 2.0  # pretend the prompt is tokens 5, 7, 9


@pytest.fixture
def spy():
    obj = Spy()
    registry().add_method(obj, plugin="test-spy")
    yield obj
    registry().pm.unregister(obj)
    registry().methods.pop("spy", None)


def test_inject_hook_called_once_with_the_adapter_name(spy):
    peftlab.add_adapter(tiny_model(), "spy", name="mine")
    assert spy.calls == [("inject", "mine")]


def test_inject_failure_leaves_no_half_registered_adapter(spy):
    model = tiny_model()
    with pytest.raises(MethodError):
        peftlab.add_adapter(model, "lora", {"target_modules": ["no_such_layer"]})
    assert "default" not in peftlab.adapter_state(model).adapters


def test_trainable_params_hook_decides_what_trains(spy):
    model = tiny_model()
    peftlab.add_adapter(model, "spy")
    trainable = peftlab.prepare_for_training(model)
    assert list(trainable) == ["spy_vec"]
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["spy_vec"]


def test_save_and_load_hooks_round_trip(spy, tmp_path):
    model = tiny_model()
    peftlab.add_adapter(model, "spy")
    with torch.no_grad():
        model.spy_vec.copy_(torch.arange(64.0))
    peftlab.save_adapter(model, tmp_path / "spy")
    fresh = tiny_model()
    peftlab.load_adapter(fresh, tmp_path / "spy")
    assert torch.equal(fresh.spy_vec, torch.arange(64.0))


def test_merge_and_unmerge_hooks_called_once_each(spy):
    model = tiny_model()
    peftlab.add_adapter(model, "spy")
    peftlab.merge_adapter(model)
    peftlab.merge_adapter(model)  # already merged: not merged twice
    peftlab.unmerge_adapter(model)
    assert [c for c in spy.calls if c[0] in ("merge", "unmerge")] == [("merge", "default"), ("unmerge", "default")]


def test_extra_loss_and_on_train_step_hooks_driven_by_the_trainer(spy, tiny_dir, tmp_path):
    model, tok = load_model(tiny_dir)
    train(
        TrainArgs(
            method="spy",
            dataset="capitals-json",
            max_steps=3,
            batch_size=2,
            max_length=96,
            max_eval_samples=2,
            output_dir=str(tmp_path / "run"),
            learning_rate=1e-2,
        ),
        model=model,
        tokenizer=tok,
    )
    steps = [c for c in spy.calls if c[0] == "on_train_step"]
    assert steps == [("on_train_step", 1, 3), ("on_train_step", 2, 3), ("on_train_step", 3, 3)]
    assert sum(c[0] == "extra_loss" for c in spy.calls) == 3


def test_load_base_model_hook_consulted_when_loading_for_a_method(spy, tiny_dir):
    model, _ = load_model(tiny_dir, method="spy", dtype="float32")
    assert ("load_base_model", "CAUSAL_LM", "torch.float32") in spy.calls
    assert model.config.hidden_size == 64  # the hook returned None: core loaded it


def test_soft_prompt_hook_feeds_nearest_tokens(spy, tiny_dir):
    model, tok = load_model(tiny_dir)
    peftlab.add_adapter(model, "spy")
    rows = nearest_tokens(model, tok, top_k=1)
    assert [r[0][0] for r in rows] == [tok.decode([5]), tok.decode([7]), tok.decode([9])]
    assert all(abs(r[0][1] - 1.0) < 1e-5 for r in rows)  # cosine of a vector with itself


def test_soft_prompt_hook_absent_gives_a_clear_error():
    model = tiny_model()
    peftlab.add_adapter(model, "lora")
    with pytest.raises(MethodError, match="no soft prompt"):
        nearest_tokens(model, None)


def test_register_methods_hook_registers_every_declared_method():
    from peftlab.plugins import Registry

    class Two:
        @staticmethod
        def register_methods(register):
            a, b = Spy(), Spy()
            b.name = "spy2"
            register(a)
            register(b)

    reg = Registry()
    reg.add_plugin(Two(), name="two")
    assert sorted(reg.methods) == ["spy", "spy2"]


def test_unload_hook_restores_a_plain_model_with_merged_weights():
    model = tiny_model()
    ids = torch.arange(3, 15).view(1, -1)
    peftlab.add_adapter(model, "lora", {"init_lora_weights": False})
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
    peftlab.merge_and_unload(model)
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert type(model.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    assert not peftlab.adapter_state(model).adapters
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, adapted, atol=1e-5)


def test_unload_missing_means_merge_and_unload_refuses(spy):
    model = tiny_model()
    peftlab.add_adapter(model, "spy")
    with pytest.raises(MethodError, match="no unload hook"):
        peftlab.merge_and_unload(model)


def test_make_optimizer_hook_chooses_the_trainers_optimizer(spy, tiny_dir, tmp_path, monkeypatch):
    made = []

    def sgd(model, config, adapter_name, params, lr, weight_decay):
        made.append((adapter_name, lr, len(params)))
        return torch.optim.SGD(params, lr=lr)

    monkeypatch.setattr(spy, "make_optimizer", hookimpl(sgd), raising=False)
    registry().pm.unregister(spy)  # re-register so pluggy sees the new hook implementation
    registry().methods.pop("spy")
    registry().add_method(spy, plugin="test-spy")
    model, tok = load_model(tiny_dir)
    seen = []
    monkeypatch.setattr(torch.optim.SGD, "step", lambda self, *a, **k: seen.append(type(self).__name__))
    train(
        TrainArgs(
            method="spy",
            dataset="capitals-json",
            max_steps=2,
            batch_size=2,
            max_length=96,
            max_eval_samples=0,
            output_dir=str(tmp_path / "run"),
            learning_rate=5e-3,
        ),
        model=model,
        tokenizer=tok,
    )
    assert made == [("default", 5e-3, 1)] and seen == ["SGD", "SGD"]
    # without the hook (None), the trainer's AdamW
    fresh = tiny_model()
    peftlab.add_adapter(fresh, "lora")
    from peftlab.adapters import make_optimizer

    params = list(peftlab.prepare_for_training(fresh).values())
    assert type(make_optimizer(fresh, "default", params, 1e-3)) is torch.optim.AdamW
