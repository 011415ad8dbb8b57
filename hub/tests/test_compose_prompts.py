"""Weighted merges of the other methods (``peftlab compose``): soft prompts and KV prefixes (``linear``, ``cat``),
BitFit (a weighted average of biases), and the bottleneck adapter's refusal with its reason."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import peftlab
from peftlab.kit import PROMPT_KEY
from peftlab.models import load_model
from peftlab.testing import randomize_adapter, skip_if_peft_fails
from peftlab_hub import compose
from peftlab_hub.compose import CompositionError

pytestmark = pytest.mark.usefixtures("one_thread")

IDS = torch.tensor([[1, 5, 9, 13, 21, 34]])
# method -> the peft_type of its merged adapter (a virtual-token merge is a plain prompt table: PROMPT_TUNING)
PROMPT_METHODS = {
    "prompt_tuning": "PROMPT_TUNING",
    "p_tuning": "PROMPT_TUNING",
    "prefix_tuning": "PREFIX_TUNING",
    "p_tuning_v2": "PREFIX_TUNING",
}


def _save(tiny_dir, folder, method, seed, std=0.5, **config):
    model, _ = load_model(tiny_dir)
    peftlab.add_adapter(model, method, config)
    randomize_adapter(model, std=std, seed=seed)
    return peftlab.save_adapter(model, folder)


def _tensors(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


def _config(folder) -> dict:
    return json.loads((folder / "adapter_config.json").read_text())


def _logits(tiny_dir, folder=None) -> torch.Tensor:
    model, _ = load_model(tiny_dir)
    if folder is not None:
        peftlab.load_adapter(model, folder)
    with torch.no_grad():
        return model.eval()(IDS).logits


@pytest.fixture(scope="module")
def prompt_parents(tiny_dir, tmp_path_factory):
    """Per method: two adapters of 3 virtual tokens and one of 2."""
    root = tmp_path_factory.mktemp("prompts")
    return {
        m: [
            _save(tiny_dir, root / f"{m}-a", m, seed=1, num_virtual_tokens=3),
            _save(tiny_dir, root / f"{m}-b", m, seed=2, num_virtual_tokens=3),
            _save(tiny_dir, root / f"{m}-c", m, seed=3, num_virtual_tokens=2),
        ]
        for m in PROMPT_METHODS
    }


@pytest.mark.parametrize("method", PROMPT_METHODS)
def test_linear_is_the_weighted_sum_of_the_prompts_and_loads_in_peftlab_and_peft(
    method, prompt_parents, tiny_dir, tmp_path
):
    a, b, _ = prompt_parents[method]
    out = compose([a, b], [0.3, 0.7], "linear", output=tmp_path / "merged")
    pa, pb = _tensors(a)[PROMPT_KEY], _tensors(b)[PROMPT_KEY]
    merged = _tensors(out)
    assert set(merged) == {PROMPT_KEY}
    assert (merged[PROMPT_KEY] - (0.3 * pa + 0.7 * pb)).abs().max().item() <= 1e-6
    cfg = _config(out)
    assert cfg["peft_type"] == PROMPT_METHODS[method] and cfg["num_virtual_tokens"] == 3
    assert json.loads((out / "peftlab.json").read_text())["composition"]["combination"] == "linear"
    ours = _logits(tiny_dir, out)
    assert (ours - _logits(tiny_dir)).abs().max().item() > 1e-3  # the merged prompt acts
    if PROMPT_METHODS[method] == "PREFIX_TUNING":
        skip_if_peft_fails(method)  # peft 0.21.2 on transformers 5.24 runs no prefix: nothing to compare with
    from peft import PeftModel

    with torch.no_grad():
        theirs = PeftModel.from_pretrained(load_model(tiny_dir)[0], str(out)).eval()(IDS).logits
    assert (ours - theirs[:, -IDS.shape[1] :]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("method", PROMPT_METHODS)
def test_cat_puts_the_weighted_virtual_tokens_one_after_another(method, prompt_parents, tmp_path, tiny_dir):
    a, _, c = prompt_parents[method]
    out = compose([a, c], [0.5, 2.0], "cat", output=tmp_path / "cat")
    pa, pc = _tensors(a)[PROMPT_KEY], _tensors(c)[PROMPT_KEY]
    merged = _tensors(out)[PROMPT_KEY]
    assert merged.shape[0] == 5 and _config(out)["num_virtual_tokens"] == 5
    assert torch.equal(merged[:3], 0.5 * pa) and torch.equal(merged[3:], 2.0 * pc)
    _logits(tiny_dir, out)  # loads in peftlab


@pytest.mark.parametrize("method", PROMPT_METHODS)
def test_linear_of_prompts_of_different_lengths_is_refused_naming_cat(method, prompt_parents, tmp_path):
    a, _, c = prompt_parents[method]
    with pytest.raises(peftlab.MethodError, match="linear needs one num_virtual_tokens.*use cat"):
        compose([a, c], [0.5, 0.5], "linear", output=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_a_prompt_tuning_and_a_p_tuning_prompt_merge_into_one_prompt(prompt_parents, tmp_path):
    """Both save the prompt as it enters the model, so a mix merges as prompt tables."""
    a, b = prompt_parents["prompt_tuning"][0], prompt_parents["p_tuning"][1]
    out = compose([a, b], [1.0, -1.0], "linear", output=tmp_path / "mix")
    expected = _tensors(a)[PROMPT_KEY] - _tensors(b)[PROMPT_KEY]
    assert (_tensors(out)[PROMPT_KEY] - expected).abs().max().item() <= 1e-6
    assert json.loads((out / "peftlab.json").read_text())["method"] == "prompt_tuning"


@pytest.fixture(scope="module")
def bitfit_parents(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("bitfit")
    return [_save(tiny_dir, root / f"b{seed}", "bitfit", seed=seed, std=0.1) for seed in (1, 2)]


def test_bitfit_linear_is_the_weighted_average_of_the_biases_and_loads(bitfit_parents, tiny_dir, tmp_path):
    a, b = bitfit_parents
    out = compose([a, b], [0.25, 0.75], "linear", output=tmp_path / "bitfit")
    ta, tb, merged = _tensors(a), _tensors(b), _tensors(out)
    assert set(merged) == set(ta) and len(merged) > 0
    assert max((merged[k] - (0.25 * ta[k] + 0.75 * tb[k])).abs().max().item() for k in merged) <= 1e-6
    assert _config(out)["peft_type"] == "BITFIT"
    model, _ = load_model(tiny_dir)
    peftlab.load_adapter(model, out)
    # the merged deltas are the weighted average of the parents' (the base biases cancel)
    parent = {}
    for name, folder in (("a", a), ("b", b)):
        m, _ = load_model(tiny_dir)
        peftlab.load_adapter(m, folder, name)
        parent[name] = {n: p.detach().clone() for n, p in m.named_parameters() if f".{name}" in n}
    deltas = {n: p.detach() for n, p in model.named_parameters() if n.endswith(".default")}
    assert deltas and all(
        (d - 0.25 * parent["a"][n[: -len("default")] + "a"] - 0.75 * parent["b"][n[: -len("default")] + "b"])
        .abs()
        .max()
        .item()
        <= 1e-6
        for n, d in deltas.items()
    )


def test_bitfit_weights_not_summing_to_one_are_refused_saying_why(bitfit_parents, tmp_path):
    with pytest.raises(peftlab.MethodError, match="must sum to 1, not 1.5.*base bias"):
        compose(bitfit_parents, [1.0, 0.5], "linear", output=tmp_path / "x")
    with pytest.raises(CompositionError, match="bitfit adapters combine by linear, not 'cat'"):
        compose(bitfit_parents, [0.5, 0.5], "cat", output=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_a_bottleneck_adapter_is_refused_with_its_note(tiny_dir, tmp_path):
    adapters = [_save(tiny_dir, tmp_path / f"ad{seed}", "adapter", seed=seed, std=0.1) for seed in (1, 2)]
    with pytest.raises(CompositionError, match="adapter adapters cannot be combined: .*non-linear.*stack"):
        compose(adapters, [0.5, 0.5], "linear", output=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_a_merge_that_gives_nan_writes_nothing(bitfit_parents, tmp_path):
    """Whatever a method's combine computes, an adapter holding NaN or inf is refused before anything is written."""
    import shutil

    from safetensors.torch import save_file

    bad = shutil.copytree(bitfit_parents[0], tmp_path / "bad")
    tensors = _tensors(bad)
    key = sorted(tensors)[0]
    tensors[key] = torch.full_like(tensors[key], float("nan"))
    save_file(tensors, str(bad / "adapter_model.safetensors"))
    with pytest.raises(CompositionError, match=f"the linear merge gave NaN or inf values \\(in {key}"):
        compose([bad, bitfit_parents[1]], [0.5, 0.5], "linear", output=tmp_path / "x")
    assert not (tmp_path / "x").exists()
