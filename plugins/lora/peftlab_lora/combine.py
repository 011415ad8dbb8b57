"""Weighted merges of LoRA-family adapters: peft's ``add_weighted_adapter`` types, with peft's names and maths.

Every parent is a set of low-rank factors ``{module path: (A, B, scaling)}`` with ``ΔW = scaling · B A``
(``A`` is ``[r, in]``, ``B`` is ``[out, r]``). The merged adapter has scaling 1 (``lora_alpha = r``, no rsLoRA),
the weights and the parents' scalings folded into its factors. Three families of types:

* ``cat`` — exact: ``A = [c₁A₁; c₂A₂; …]``, ``B = [|c₁|B₁ |c₂|B₂ …]`` with ``cᵢ = ±√|wᵢsᵢ|`` (the sign of ``wᵢ``), so
  ``ΔW = Σ wᵢ ΔWᵢ`` at rank ``Σ rᵢ``. (peft puts all of ``wᵢsᵢ`` on ``A``, for the same ``ΔW``; split, a parent
  brought to LoRA form by ``cat`` alone — a mix of methods — has the factors the factor-level types expect, so a
  LoRA + QLoRA ``linear`` merge is the LoRA + LoRA one.)
* ``svd``, ``ties_svd``, ``dare_linear_svd``, ``dare_ties_svd``, ``magnitude_prune_svd`` — merge the exact
  ``ΔWᵢ = sᵢ BᵢAᵢ`` (task arithmetic, TIES, DARE, magnitude pruning), then keep the best rank-``svd_rank``
  approximation (truncated SVD; default rank: the largest parent rank, as peft).
* ``linear``, ``ties``, ``dare_linear``, ``dare_ties``, ``magnitude_prune`` — peft's *factor-level* formula: the
  same merge applied to the A's and to the B's separately, with ``√|wᵢsᵢ|`` on each side (the sign on A). It is not
  ``Σ wᵢ ΔWᵢ`` (cross terms ``BᵢAⱼ`` appear); peft documents it as a rough approximation. Parents need equal ranks.

A module a parent does not adapt is skipped for that parent (as peft does: it counts as a zero ΔW). The random
types draw their DARE masks from one ``torch.Generator`` seeded with ``seed``, module by module in natural path
order (layer numbers as numbers), parents in order, A's before B's: the order peft draws from the global RNG.
"""

from __future__ import annotations

import math
import re

import torch

from peftlab import MethodError

COMBINATIONS = (
    "cat",
    "svd",
    "linear",
    "ties",
    "ties_svd",
    "dare_linear",
    "dare_ties",
    "dare_linear_svd",
    "dare_ties_svd",
    "magnitude_prune",
    "magnitude_prune_svd",
)
FACTOR_LEVEL = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")
NEEDS_DENSITY = (
    "ties",
    "ties_svd",
    "dare_linear",
    "dare_ties",
    "dare_linear_svd",
    "dare_ties_svd",
    "magnitude_prune",
    "magnitude_prune_svd",
)
MAJORITY_SIGNS = ("total", "frequency")

Factors = tuple[torch.Tensor, torch.Tensor, float]  # A [r, in], B [out, r], scaling


def natural_key(path: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


# --- the element-wise merges of peft.utils.merge_utils (TIES, DARE, magnitude pruning) ---------------------


def _prune(t: torch.Tensor, density: float, random: bool, gen: torch.Generator) -> torch.Tensor:
    if density >= 1:
        return t  # peft prunes nothing (and draws nothing) at density 1
    if random:  # DARE: keep each entry with probability `density`, rescale by 1/density
        return t * torch.bernoulli(torch.full_like(t, density), generator=gen) / density
    mask = torch.zeros(t.numel(), dtype=t.dtype)  # magnitude: keep the top `density` share by |value|
    mask[torch.topk(t.abs().reshape(-1), k=int(density * t.numel())).indices] = 1
    return t * mask.reshape(t.shape)


def merge_tensors(
    tensors: list[torch.Tensor],
    weights: list[float],
    kind: str,
    density: float | None,
    majority_sign: str,
    gen: torch.Generator,
) -> torch.Tensor:
    """``kind``: ``linear`` (Σ wᵢtᵢ), ``magnitude_prune``, ``ties``, ``dare_linear``, ``dare_ties``."""
    if kind != "linear":
        tensors = [_prune(t, density, kind.startswith("dare"), gen) for t in tensors]
    stacked = torch.stack(tensors)
    w = torch.tensor(weights, dtype=stacked.dtype).view(-1, *([1] * (stacked.dim() - 1)))
    if not kind.endswith("ties"):
        return (stacked * w).sum(dim=0)
    # TIES: elect each entry's sign (from the pruned, unweighted tensors), average the weighted ones that agree
    signs = stacked.sign()
    magnitude = stacked.sum(dim=0) if majority_sign == "total" else signs.sum(dim=0)
    agree = signs == torch.where(magnitude >= 0, 1, -1)
    return (stacked * w * agree).sum(dim=0) / agree.sum(dim=0).clamp(min=1)


# --- the combination -------------------------------------------------------------------------------------


def check_options(
    combination: str, n: int, weights: list[float], svd_rank: int | None, density: float | None, majority_sign: str
) -> None:
    if combination not in COMBINATIONS:
        raise MethodError(f"unknown combination {combination!r}; one of {', '.join(COMBINATIONS)}")
    if n < 1 or len(weights) != n:
        raise MethodError(f"{len(weights)} weight(s) for {n} parent(s): give one weight per parent")
    if any(isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) for w in weights):
        raise MethodError(f"weights must be finite numbers, got {list(weights)}")
    if combination in NEEDS_DENSITY and density is None:
        raise MethodError(f"combination {combination!r} needs a density (the share of entries kept, in (0, 1])")
    # DARE rescales by 1/density, so 0 would make every entry NaN (and keep nothing in any type)
    if density is not None and (isinstance(density, bool) or not 0 < density <= 1):
        raise MethodError(f"density must be in (0, 1] (the share of entries kept), got {density}")
    if majority_sign not in MAJORITY_SIGNS:
        raise MethodError(f"majority_sign must be total or frequency, got {majority_sign!r}")
    if svd_rank is not None and (not isinstance(svd_rank, int) or svd_rank < 1):
        raise MethodError(f"svd_rank must be a positive integer, got {svd_rank!r}")


def combine_factors(
    parents: list[dict[str, Factors]],
    weights: list[float],
    combination: str = "cat",
    *,
    svd_rank: int | None = None,
    density: float | None = None,
    majority_sign: str = "total",
    seed: int = 0,
    names: list[str] | None = None,
) -> tuple[dict[str, tuple], int]:
    """Merge the parents' factors; returns ``({path: (A, B)}, r)`` for an adapter of scaling 1 and rank ``r``
    (modules of a smaller rank are padded with zeros, which changes nothing)."""
    check_options(combination, len(parents), weights, svd_rank, density, majority_sign)
    names = names or [f"parent {i + 1}" for i in range(len(parents))]
    for f, name in zip(parents, names, strict=True):
        for path, (A, B, s) in f.items():
            if not (math.isfinite(s) and bool(torch.isfinite(A).all()) and bool(torch.isfinite(B).all())):
                raise MethodError(f"{name}: its factors of {path} hold NaN or inf values; it cannot be merged")
    gen = torch.Generator().manual_seed(int(seed))
    kind = "linear" if combination == "svd" else combination.removesuffix("_svd")
    k = svd_rank or max(A.shape[0] for f in parents for A, _, _ in f.values())  # peft's default svd rank
    out: dict[str, tuple] = {}
    for path in sorted({p for f in parents for p in f}, key=natural_key):
        here = [(f[path], float(w), n) for f, w, n in zip(parents, weights, names, strict=True) if path in f]
        try:
            A, B = _merge_module(here, path, combination, kind, k, density, majority_sign, gen)
        except torch.linalg.LinAlgError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise MethodError(f"{combination} at {path}: the SVD failed ({first}); try cat (exact, no SVD)") from None
        if not (bool(torch.isfinite(A).all()) and bool(torch.isfinite(B).all())):
            raise MethodError(f"{combination} at {path} gave NaN or inf values; no adapter is written")
        out[path] = (A, B)
    r = max(A.shape[0] for A, _ in out.values())
    return {p: _pad(A, B, r) for p, (A, B) in out.items()}, r


def _merge_module(
    here: list, path: str, combination: str, kind: str, k: int, density, majority_sign: str, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The merged ``(A, B)`` of one module from ``here``: its parents' ``(factors, weight, name)``."""
    dtype = here[0][0][0].dtype
    if combination == "cat":  # √|wᵢsᵢ| on each factor (the sign on A): what the factor-level types split
        A = torch.cat([A.float() * _signed_root(w * s) for (A, _, s), w, _ in here])
        B = torch.cat([B.float() * math.sqrt(abs(w * s)) for (_, B, s), w, _ in here], dim=1)
    elif combination in FACTOR_LEVEL:
        ranks = {n: A.shape[0] for (A, _, _), _, n in here}
        if len(set(ranks.values())) > 1:
            raise MethodError(
                f"{combination} merges the factors A and B themselves, so the parents need one "
                f"rank, but at {path} they have {ranks}; use cat (exact) or svd instead"
            )
        ws = [w * s for (_, _, s), w, _ in here]
        wa = [_signed_root(x) for x in ws]
        wb = [math.sqrt(abs(x)) for x in ws]
        A = merge_tensors([A.float() for (A, _, _), _, _ in here], wa, kind, density, majority_sign, gen)
        B = merge_tensors([B.float() for (_, B, _), _, _ in here], wb, kind, density, majority_sign, gen)
    elif combination == "svd":  # Σ wᵢsᵢBᵢAᵢ = [B₁ B₂ …][w₁s₁A₁; …] has rank ≤ Σrᵢ: SVD it in factored form
        A = torch.cat([A.float() * (w * s) for (A, _, s), w, _ in here])
        A, B = low_rank_svd(A, torch.cat([B.float() for (_, B, _), _, _ in here], dim=1), k)
    else:  # the other svd types: merge the exact ΔWᵢ = sᵢBᵢAᵢ, then the best rank-k approximation
        deltas = [(B.float() @ A.float()) * s for (A, B, s), _, _ in here]
        delta = merge_tensors(deltas, [w for _, w, _ in here], kind, density, majority_sign, gen)
        U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
        A, B = Vh[:k], U[:, :k] * S[:k]
    return A.to(dtype), B.to(dtype)


def _signed_root(x: float) -> float:
    """``±√|x|`` with the sign of ``x``: the share of ``x`` put on ``A`` (``B`` gets ``√|x|``)."""
    return math.copysign(math.sqrt(abs(x)), 1.0 if x >= 0 else -1.0)


def low_rank_svd(A: torch.Tensor, B: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The best rank-``k`` factors of ``B @ A`` (``A`` [R, in], ``B`` [out, R]) without forming the product — what the
    dense SVD of ``B @ A`` gives, at the cost of two thin QRs and an R×R SVD: with ``B = Q_b R_b`` and
    ``Aᵀ = Q_a R_a``, ``B A = Q_b (R_b R_aᵀ) Q_aᵀ``. Rows beyond the rank are zeros (singular value 0), so the
    shapes are the dense SVD's: ``min(k, out, in)`` rows of ``A``, columns of ``B``."""
    qb, rb = torch.linalg.qr(B)
    qa, ra = torch.linalg.qr(A.T)
    u, sv, vh = torch.linalg.svd(rb @ ra.T)
    k = min(k, B.shape[0], A.shape[1])
    A_k, B_k = (vh @ qa.T)[:k], (qb @ u)[:, :k] * sv[:k]
    return _pad(A_k, B_k, k)


def _pad(A: torch.Tensor, B: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    extra = r - A.shape[0]
    if extra:
        A = torch.cat([A, A.new_zeros(extra, A.shape[1])])
        B = torch.cat([B, B.new_zeros(B.shape[0], extra)], dim=1)
    return A.contiguous(), B.contiguous()


# --- adapters on disk <-> factors --------------------------------------------------------------------------


def lora_factors(files, prefix: str = "base_model.model.") -> dict[str, Factors]:
    """``{module path: (A, B, scaling)}`` of a LoRA adapter read from disk (``peftlab.io.AdapterFiles``)."""
    cfg, tensors = files.config, files.weights.tensors
    if getattr(cfg, "bias", "none") != "none" or files.peft_config.get("modules_to_save"):
        raise MethodError(
            f"{files.path}: trained biases or task heads (bias={cfg.bias!r}, modules_to_save="
            f"{files.peft_config.get('modules_to_save')}) cannot be combined; only A·B can"
        )
    scaling = cfg.lora_alpha / (math.sqrt(cfg.r) if cfg.use_rslora else cfg.r)
    out, suffix = {}, ".lora_A.weight"
    for key in tensors:
        if key.endswith(suffix):
            path = key.removeprefix(prefix).removesuffix(suffix)
            b_key = key[: -len(suffix)] + ".lora_B.weight"
            if b_key not in tensors:
                raise MethodError(f"{files.path}: {key} has no {b_key}")
            out[path] = (tensors[key], tensors[b_key], scaling)
        elif not key.endswith(".lora_B.weight"):
            raise MethodError(f"{files.path}: tensor {key} is not a LoRA factor; it cannot be combined")
    return out


def lora_adapter(
    parents: list, merged: dict[str, tuple], r: int, prefix: str = "base_model.model."
) -> tuple[dict, dict[str, torch.Tensor]]:
    """The merged adapter as ``(adapter_config.json keys, PEFT tensors)``: plain LoRA of scaling 1."""
    targets = [getattr(p.config, "target_modules", None) for p in parents]
    if all(isinstance(t, list) for t in targets):
        target_modules = sorted(set().union(*targets))  # names: they adapt exactly the union of the parents'
    else:  # a regex or a family default: name the modules themselves
        target_modules = sorted(merged, key=natural_key)
    fan = {bool(getattr(p.config, "fan_in_fan_out", False)) for p in parents}
    if len(fan) > 1:
        raise MethodError("the parents disagree on fan_in_fan_out: they were made for different layer types")
    config = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": r,
        "use_rslora": False,
        "lora_dropout": getattr(parents[0].config, "lora_dropout", 0.0),
        "target_modules": target_modules,
        "init_lora_weights": True,
        "bias": "none",
        "fan_in_fan_out": fan.pop(),
    }
    tensors = {}
    for path, (A, B) in merged.items():
        tensors[f"{prefix}{path}.lora_A.weight"] = A
        tensors[f"{prefix}{path}.lora_B.weight"] = B
    return config, tensors


def combine_lora_family(
    parents: list,
    factors: list[dict[str, Factors]],
    weights: list[float],
    combination: str,
    options: dict,
    prefix: str = "base_model.model.",
) -> tuple[dict, dict[str, torch.Tensor]]:
    """What a LoRA-family method's ``combine`` hook returns, from each parent's factors."""
    opts = {k: options.get(k) for k in ("svd_rank", "density")}
    merged, r = combine_factors(
        factors,
        list(weights),
        combination,
        **opts,
        majority_sign=options.get("majority_sign") or "total",
        seed=options.get("seed") or 0,
        names=[str(p.path) for p in parents],
    )
    return lora_adapter(parents, merged, r, prefix)
