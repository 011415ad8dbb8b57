"""Weighted merges of LoRA-family adapters (``peftlab compose``): every type against peft's
``add_weighted_adapter`` on the same parents, the exact maths where peft is wrong, and the merged folder in both."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

import peftlab
from peftlab.cli import main
from peftlab.models import load_model
from peftlab_hub import compose
from peftlab_hub.compose import CompositionError
from peftlab_lora.combine import COMBINATIONS

pytestmark = pytest.mark.usefixtures("one_thread")

PREFIX = "base_model.model."
RANDOM = ("dare_linear", "dare_ties", "dare_linear_svd", "dare_ties_svd")
DIFFS: dict[str, float] = {}  # per-type max |ΔW - ΔW_peft|, printed at the end of the module


def _save(tiny_dir, folder, method="lora", seed=0, **config):
    model, _ = load_model(tiny_dir)
    torch.manual_seed(seed)
    if method in ("lora", "adalora"):
        config = {"init_lora_weights": False, **config}  # random A and B: the adapter acts
    peftlab.add_adapter(model, method, config)
    return peftlab.save_adapter(model, folder)


@pytest.fixture(scope="module")
def parents(tiny_dir, tmp_path_factory):
    """Two LoRA adapters of one rank (peft's linear types need it) and different alphas (α ≠ r); the second adapts
    v_proj only, so q_proj has one parent. (Module paths in natural order are the model's order here, so DARE's
    masks are drawn in peft's order.)"""
    root = tmp_path_factory.mktemp("compose")
    return [
        _save(tiny_dir, root / "a", seed=1, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
        _save(tiny_dir, root / "b", seed=2, r=4, lora_alpha=16, target_modules=["v_proj"]),
    ]


def _factors(folder) -> dict[str, tuple]:
    """``{module path: (A, B, scaling)}`` read straight from a LoRA folder."""
    cfg = json.loads((folder / "adapter_config.json").read_text())
    t = load_file(str(folder / "adapter_model.safetensors"))
    s = cfg["lora_alpha"] / (math.sqrt(cfg["r"]) if cfg.get("use_rslora") else cfg["r"])
    return {
        k[len(PREFIX) : -len(".lora_A.weight")]: (t[k], t[k.replace("lora_A", "lora_B")], s)
        for k in t
        if k.endswith(".lora_A.weight")
    }


def _deltas(folder) -> dict[str, torch.Tensor]:
    return {p: s * B @ A for p, (A, B, s) in _factors(folder).items()}


def _exact(folders, weights) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for folder, w in zip(folders, weights, strict=True):
        for p, d in _deltas(folder).items():
            out[p] = out.get(p, 0) + w * d
    return out


def _peft(tiny_dir, folders, weights, combination, monkeypatch=None, seed=0, **kw) -> dict[str, torch.Tensor]:
    """peft's add_weighted_adapter on the same parents; ΔW per module of the merged adapter."""
    import peft.tuners.lora.model as lora_model
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    base, _ = load_model(tiny_dir)
    model = PeftModel.from_pretrained(base, str(folders[0]), adapter_name="p0")
    for i, f in enumerate(folders[1:], 1):
        model.load_adapter(str(f), adapter_name=f"p{i}")
    if monkeypatch is not None:  # peft draws DARE's masks from the global RNG right after initialising the new
        freeze = lora_model._freeze_adapter  # adapter: seed it there, as our generator is seeded

        def seeded(*args, **kwargs):
            freeze(*args, **kwargs)
            torch.manual_seed(seed)

        monkeypatch.setattr(lora_model, "_freeze_adapter", seeded)
    model.add_weighted_adapter(
        [f"p{i}" for i in range(len(folders))], weights, "merged", combination_type=combination, **kw
    )
    return {
        n.removeprefix(PREFIX): m.get_delta_weight("merged")
        for n, m in model.named_modules()
        if isinstance(m, LoraLayer) and "merged" in m.lora_A
    }


def _max_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max((a[p].float() - b[p].float()).abs().max().item() for p in a)


@pytest.mark.parametrize("combination", COMBINATIONS)
def test_combine_hook_matches_peft_for_every_type(combination, parents, tiny_dir, tmp_path, monkeypatch):
    weights = [0.7, -0.4]
    options = {"density": 0.5} if combination not in ("cat", "svd", "linear") else {}
    if "ties" in combination:
        options["majority_sign"] = "frequency" if combination == "dare_ties" else "total"
    out = compose(parents, weights, combination, output=tmp_path / "merged", seed=3, **options)
    ours = _deltas(out)
    kw = {"density": options.get("density"), "majority_sign_method": options.get("majority_sign", "total")}
    theirs = _peft(tiny_dir, parents, weights, combination, monkeypatch, seed=3, **kw)
    DIFFS[combination] = diff = _max_diff(ours, theirs)
    assert diff <= 1e-5, f"{combination}: max |ΔW - ΔW_peft| = {diff}"
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["lora_alpha"] == cfg["r"] and cfg["use_rslora"] is False
    assert cfg["r"] == {"cat": 8}.get(combination, 4)  # Σ rᵢ; svd: the largest parent rank; linear: the common r
    assert cfg["target_modules"] == ["q_proj", "v_proj"]  # the union; q_proj from one parent only
    if combination in RANDOM:  # the seed decides the masks: the same seed gives the same adapter, another not
        again = _deltas(compose(parents, weights, combination, output=tmp_path / "again", seed=3, **options))
        other = _deltas(compose(parents, weights, combination, output=tmp_path / "other", seed=4, **options))
        assert _max_diff(ours, again) == 0 and _max_diff(ours, other) > 1e-3


def test_cat_is_the_exact_weighted_sum_and_svd_its_best_rank_k_approximation(parents, tmp_path):
    weights = [0.7, -0.4]
    exact = _exact(parents, weights)
    cat = _deltas(compose(parents, weights, "cat", output=tmp_path / "cat"))
    assert _max_diff(cat, exact) <= 1e-6
    svd = compose(parents, weights, "svd", svd_rank=3, output=tmp_path / "svd")
    assert json.loads((svd / "adapter_config.json").read_text())["r"] == 3
    best = {}
    for p, d in exact.items():
        U, S, Vh = torch.linalg.svd(d.double())
        best[p] = (U[:, :3] * S[:3]) @ Vh[:3]
    assert _max_diff(_deltas(svd), best) <= 1e-5


def test_where_peft_differs_rslora_parents(tiny_dir, tmp_path, parents):
    """peft's merged adapter copies use_rslora=True from the first parent with lora_alpha = r_new, so it scales
    the merged update by √r_new instead of 1; ours folds the parents' α/√r into the factors and saves scaling 1."""
    rs = [_save(tiny_dir, tmp_path / f"rs{i}", seed=i, r=4, lora_alpha=8, use_rslora=True) for i in (1, 2)]
    weights = [0.5, 1.5]
    exact = _exact(rs, weights)
    for combination, r_new in (("cat", 8), ("svd", 8)):
        opts = {"svd_rank": 8} if combination == "svd" else {}
        ours = _deltas(compose(rs, weights, combination, output=tmp_path / combination, **opts))
        assert _max_diff(ours, exact) <= 1e-5
        theirs = _peft(tiny_dir, rs, weights, combination, **opts)
        assert _max_diff({p: d * math.sqrt(r_new) for p, d in exact.items()}, theirs) <= 1e-4  # peft: √r too big
    linear = _deltas(compose(rs, weights, "linear", output=tmp_path / "linear"))
    assert _max_diff({p: d * 2 for p, d in linear.items()}, _peft(tiny_dir, rs, weights, "linear")) <= 1e-5


def test_different_ranks_and_alphas_cat_and_svd_are_exact_linear_is_refused(tiny_dir, tmp_path, parents):
    """Ranks 4 and 2 with α 8 and 7: cat and svd are exact (and peft 0.21 agrees); the factor-level types
    cannot add A's of different shapes, so they are refused (peft raises too)."""
    other = _save(tiny_dir, tmp_path / "r2", seed=5, r=2, lora_alpha=7)
    mix, weights = [parents[0], other], [1.0, 0.5]
    cat = compose(mix, weights, "cat", output=tmp_path / "cat")
    assert json.loads((cat / "adapter_config.json").read_text())["r"] == 6
    assert _max_diff(_deltas(cat), _exact(mix, weights)) <= 1e-6
    assert _max_diff(_deltas(cat), _peft(tiny_dir, mix, weights, "cat")) <= 1e-5
    svd = compose(mix, weights, "svd", svd_rank=6, output=tmp_path / "svd")
    assert _max_diff(_deltas(svd), _exact(mix, weights)) <= 1e-5
    assert _max_diff(_deltas(svd), _peft(tiny_dir, mix, weights, "svd", svd_rank=6)) <= 1e-5
    with pytest.raises(peftlab.MethodError, match="need one rank.*use cat"):
        compose(mix, weights, "linear", output=tmp_path / "linear")


def test_a_lora_family_mix_merges_adalora_and_lora_exactly(tiny_dir, tmp_path, parents):
    """An AdaLoRA parent is first brought to LoRA form by its own plugin (P, Λ⊙Q, α/r₀), then merged."""
    ada = _save(tiny_dir, tmp_path / "ada", method="adalora", seed=4, init_r=4, target_r=4, lora_alpha=6)
    out = compose([parents[0], ada], [1.0, 2.0], "cat", output=tmp_path / "mix")
    assert json.loads((out / "peftlab.json").read_text())["method"] == "lora"
    model, _ = load_model(tiny_dir)
    peftlab.load_adapter(model, ada, "ada")
    ada_delta = {p: layer.delta_weight("ada") for p, layer in model.named_modules() if hasattr(layer, "lora_E")}
    expected = {p: d + 2.0 * ada_delta[p] for p, d in _deltas(parents[0]).items()}
    assert _max_diff(_deltas(out), expected) <= 1e-5
    twice = compose([ada, ada], [1.0, 0.5], "svd", output=tmp_path / "ada2")  # AdaLoRA's own combine hook
    assert _max_diff(_deltas(twice), {p: 1.5 * d for p, d in ada_delta.items()}) <= 1e-4  # |ΔW| ~ 6: SVD round-off


def test_a_qlora_parent_and_a_store_name_merge_like_lora(parents, tmp_path):
    """A QLoRA adapter is LoRA on disk: its plugin declares LoRA's types and inherits LoRA's combine. A parent may
    be named by its local store name."""
    from peftlab_hub import AdapterStore

    q = shutil.copytree(parents[0], tmp_path / "q")
    meta = json.loads((q / "peftlab.json").read_text())
    (q / "peftlab.json").write_text(json.dumps({**meta, "method": "qlora"}))
    cfg = json.loads((q / "adapter_config.json").read_text())
    (q / "adapter_config.json").write_text(json.dumps({**cfg, "bnb_4bit_quant_type": "nf4"}))
    store = AdapterStore(tmp_path / "store")
    store.add(parents[1], "b")
    out = compose([q, "b"], [0.5, 2.0], "cat", output=tmp_path / "mix", store=store)
    meta = json.loads((out / "peftlab.json").read_text())
    assert meta["method"] == "lora" and [p["method"] for p in meta["composition"]["parents"]] == ["qlora", "lora"]
    assert meta["composition"]["parents"][1]["source"] == "store"
    assert _max_diff(_deltas(out), _exact(parents, [0.5, 2.0])) <= 1e-6


def _as_qlora(folder, out, **bnb):
    q = shutil.copytree(folder, out)
    meta = json.loads((q / "peftlab.json").read_text())
    (q / "peftlab.json").write_text(json.dumps({**meta, "method": "qlora"}))
    cfg = json.loads((q / "adapter_config.json").read_text())
    (q / "adapter_config.json").write_text(json.dumps({**cfg, **bnb}))
    return q


def test_merged_qlora_adapters_stay_qlora_with_their_quantization(parents, tmp_path):
    """All-QLoRA parents give a QLoRA adapter (it needs the 4-bit base they were trained on), with their shared
    quantization settings; parents that disagree on them give plain LoRA, as a LoRA + QLoRA mix does."""
    fp4 = {"bnb_4bit_quant_type": "fp4", "bnb_4bit_use_double_quant": False}
    a, b = (_as_qlora(p, tmp_path / f"q{i}", **fp4) for i, p in enumerate(parents))
    out = compose([a, b], [0.5, 2.0], "cat", output=tmp_path / "merged")
    files = peftlab.read_adapter(out)
    assert json.loads((out / "peftlab.json").read_text())["method"] == "qlora" and files.method.name == "qlora"
    assert files.method.capabilities.needs_quantized_base
    assert files.config.bnb_4bit_quant_type == "fp4" and files.config.bnb_4bit_use_double_quant is False
    assert _max_diff(_deltas(out), _exact(parents, [0.5, 2.0])) <= 1e-6
    nf4 = _as_qlora(parents[1], tmp_path / "nf4", bnb_4bit_quant_type="nf4")
    mixed = compose([a, nf4], [0.5, 2.0], "cat", output=tmp_path / "mixed")
    assert json.loads((mixed / "peftlab.json").read_text())["method"] == "lora"


@pytest.mark.parametrize("combination", ["linear", "ties", "dare_ties", "magnitude_prune"])
def test_a_lora_plus_qlora_factor_level_merge_is_the_lora_plus_lora_one(combination, parents, tmp_path):
    """A mix is first brought to LoRA form by each method's cat; the factor-level types then see √sᵢ on each factor,
    as they do for parents of one method (with all of sᵢ on A the cross terms BᵢAⱼ came out otherwise)."""
    q = _as_qlora(parents[1], tmp_path / "q", bnb_4bit_quant_type="nf4")
    kw = {"density": 0.6, "seed": 3} if combination != "linear" else {}
    single = compose(parents, [0.7, -0.4], combination, output=tmp_path / "single", **kw)
    mixed = compose([parents[0], q], [0.7, -0.4], combination, output=tmp_path / "mixed", **kw)
    assert json.loads((mixed / "peftlab.json").read_text())["method"] == "lora"
    assert _max_diff(_deltas(mixed), _deltas(single)) <= 1e-6


def test_cat_splits_each_parents_weight_and_scaling_between_its_factors(parents, tmp_path):
    """cat's factors carry ±√|wᵢsᵢ| each (the sign on A), not all of wᵢsᵢ on A: the same ΔW, and a parent brought to
    LoRA form by cat alone (an AdaLoRA one in a mix) has the balance the factor-level types give its own method."""
    out = compose([parents[0]], [-2.0], "cat", output=tmp_path / "cat")
    merged = _factors(out)
    for path, (A0, B0, s0) in _factors(parents[0]).items():
        A1, B1, s1 = merged[path]
        assert s1 == 1.0 and torch.allclose(A1, -math.sqrt(2 * s0) * A0) and torch.allclose(B1, math.sqrt(2 * s0) * B0)


def test_the_merged_folder_loads_in_peftlab_and_in_peft_with_the_same_logits(parents, tiny_dir, tmp_path):
    from peft import PeftModel

    out = compose(parents, [0.6, 0.4], "ties_svd", density=0.7, output=tmp_path / "merged")
    meta = json.loads((out / "peftlab.json").read_text())
    comp = meta["composition"]
    assert comp["weights"] == [0.6, 0.4] and comp["combination"] == "ties_svd"
    assert [p["method"] for p in comp["parents"]] == ["lora", "lora"]
    assert all(len(p["weights_sha256"]) == 64 and p["source"] == "folder" for p in comp["parents"])
    assert meta["base_model"] == str(tiny_dir)
    ids = torch.tensor([[1, 5, 9, 13, 21, 34]])
    model, _ = load_model(tiny_dir)
    peftlab.load_adapter(model, out)
    with torch.no_grad():
        ours = model(ids).logits
        base, _ = load_model(tiny_dir)
        theirs = PeftModel.from_pretrained(base, str(out)).eval()(ids).logits
        plain = load_model(tiny_dir)[0](ids).logits
    assert (ours - theirs).abs().max().item() <= 1e-4
    assert (ours - plain).abs().max().item() > 1e-3  # the merge acts


def test_compose_cli_end_to_end(parents, tmp_path, capsys):
    out = tmp_path / "cli"
    args = [
        "compose",
        str(parents[0]),
        str(parents[1]),
        "--weights",
        "1",
        "0.5",
        "--combination",
        "dare_ties",
        "--density",
        "0.6",
        "--majority-sign",
        "frequency",
        "--seed",
        "7",
        "--output",
        str(out),
        "--json",
    ]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["combination"] == "dare_ties" and summary["weights"] == [1.0, 0.5] and summary["r"] == 4
    assert summary["options"] == {"svd_rank": None, "density": 0.6, "majority_sign": "frequency", "seed": 7}
    direct = compose(
        parents, [1, 0.5], "dare_ties", density=0.6, majority_sign="frequency", seed=7, output=tmp_path / "direct"
    )
    assert _max_diff(_deltas(out), _deltas(direct)) == 0
    assert main(["compose", str(parents[0]), "--combination", "ties", "--output", str(tmp_path / "x")]) == 2
    assert "needs a density" in capsys.readouterr().err


def test_a_method_that_cannot_combine_is_refused_with_its_reason(parents, tiny_dir, tmp_path):
    bottleneck = _save(tiny_dir, tmp_path / "bottleneck", method="adapter")
    with pytest.raises(CompositionError, match="adapter adapters cannot be combined: a bottleneck adapter is non-line"):
        compose([parents[0], bottleneck], [1, 1], "cat", output=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_parents_of_different_bases_are_refused(parents, tmp_path):
    moved = shutil.copytree(parents[1], tmp_path / "moved")
    cfg_file = moved / "adapter_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["base_model_name_or_path"] = str(tmp_path / "another-base")
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(CompositionError, match="different base models"):
        compose([parents[0], moved], [1, 1], "cat", output=tmp_path / "x")


def test_compose_refuses_an_output_folder_of_other_files_and_keeps_them(parents, tmp_path, capsys):
    docs = tmp_path / "Documents"
    docs.mkdir()
    (docs / "thesis.txt").write_text("years of work")
    with pytest.raises(peftlab.ConfigError, match="Documents is not empty and holds no adapter.*delete its files"):
        compose(parents, output=docs)
    assert main(["compose", str(parents[0]), "--output", str(docs)]) == 2
    assert "holds no adapter" in capsys.readouterr().err
    assert [p.name for p in docs.iterdir()] == ["thesis.txt"] and (docs / "thesis.txt").read_text() == "years of work"
    merged = compose(parents, output=tmp_path / "merged")  # an adapter's folder is replaced whole, as before
    assert compose(parents, [1, 2], output=merged) == merged
    assert json.loads((merged / "peftlab.json").read_text())["composition"]["weights"] == [1.0, 2.0]


@pytest.mark.parametrize("combination", ["dare_linear", "dare_ties_svd", "ties", "magnitude_prune_svd"])
def test_a_density_of_zero_is_refused(combination, parents, tmp_path):
    """DARE rescales by 1/density: at 0 every entry would be NaN (and the SVD types crashed on them)."""
    with pytest.raises(peftlab.MethodError, match=r"density must be in \(0, 1\]"):
        compose(parents, [1, 1], combination, density=0.0, output=tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("weights", [[float("nan"), 1.0], [1.0, float("inf")]])
def test_non_finite_weights_are_refused(weights, parents, tmp_path, capsys):
    with pytest.raises(CompositionError, match="weights must be finite"):
        compose(parents, weights, "cat", output=tmp_path / "x")
    args = ["compose", *map(str, parents), "--weights", *map(str, weights), "--output", str(tmp_path / "x")]
    assert main(args) == 2 and "must be finite" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_parent_holding_inf_and_a_failed_svd_are_clear_errors(parents, tmp_path, monkeypatch):
    from safetensors.torch import save_file

    bad = shutil.copytree(parents[0], tmp_path / "bad")
    tensors = load_file(str(bad / "adapter_model.safetensors"))
    key = next(k for k in sorted(tensors) if k.endswith("lora_A.weight"))
    tensors[key][0, 0] = float("inf")
    save_file(tensors, str(bad / "adapter_model.safetensors"))
    with pytest.raises(peftlab.MethodError, match="bad: its factors of .* hold NaN or inf values"):
        compose([bad, parents[1]], [1, 1], "dare_linear_svd", density=0.5, output=tmp_path / "x")

    def no_convergence(*a, **k):
        raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")

    monkeypatch.setattr(torch.linalg, "svd", no_convergence)
    with pytest.raises(peftlab.MethodError, match="dare_ties_svd at .*: the SVD failed .*failed to converge.*try cat"):
        compose(parents, [1, 1], "dare_ties_svd", density=0.5, output=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_compose_into_a_parents_own_folder_is_refused(parents, tmp_path):
    a = shutil.copytree(parents[0], tmp_path / "a")
    before = {p.name: p.read_bytes() for p in a.iterdir()}
    with pytest.raises(CompositionError, match="parent .* lies inside the output folder .* would be deleted"):
        compose([a, parents[1]], [0.5, 0.5], output=a)
    assert {p.name: p.read_bytes() for p in a.iterdir()} == before


def test_zz_report_the_diffs_against_peft():
    """Not a check: prints the per-type max |ΔW - ΔW_peft| (pytest -s) for the record."""
    for name, diff in DIFFS.items():
        print(f"{name:<22} {diff:.3g}")
