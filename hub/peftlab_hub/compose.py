"""Weighted merges of adapters into one new plain adapter (``peftlab compose``).

The hub orchestrates; each method's maths lives in its plugin, behind the ``combine`` hook, and what a method can
combine is its declaration (``capabilities.combinations``): nothing here names a method. Parents of one method go to
that method's ``combine``. A mix (LoRA + AdaLoRA + QLoRA) is first brought to one on-disk form, each parent by its
own method (a ``cat`` of the parent alone, which is exact), then merged by the method that loads that form.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

import peftlab
from peftlab import AdapterError, AdapterWeights, ConfigError, MethodError, registry
from peftlab.io import (
    CARD_FILE,
    CONFIG_FILE,
    META_FILE,
    WEIGHTS_FILE,
    AdapterFiles,
    atomic_dir,
    check_output_dir,
    check_replaceable,
    holds_adapter,
    model_card,
)
from peftlab.method import CORE_KEYS
from peftlab.recipe import check_weights

from .resolve import ResolvedAdapter, parent_inside, resolve_adapter
from .store import AdapterStore


class CompositionError(MethodError):
    """The parents cannot be combined (another base, a method that cannot combine, an unsupported type...)."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def compose(
    parents: list[str | os.PathLike],
    weights: list[float] | None = None,
    combination: str = "cat",
    *,
    output: str | os.PathLike,
    svd_rank: int | None = None,
    density: float | None = None,
    majority_sign: str = "total",
    seed: int = 0,
    store: AdapterStore | None = None,
    token: str | None = None,
) -> Path:
    """Merge ``parents`` (folders, local store names or Hub ids) with ``weights`` (default 1 each) into one plain
    PEFT adapter written atomically to ``output``; returns its folder. ``combination`` and the options are peft's
    ``add_weighted_adapter``'s (``cat``, ``svd``, ``linear``, ``ties``, ``dare_*``, ``magnitude_prune*``;
    ``svd_rank``, ``density``, ``majority_sign``) plus ``seed`` for DARE's random masks.
    ``peftlab.json`` records the parents (provenance and the sha256 of their weights), weights and type."""
    if not parents:
        raise CompositionError("compose needs at least one parent adapter")
    try:  # one finite number per parent (a NaN or inf weight would write a NaN adapter)
        weights = check_weights([1.0] * len(parents) if weights is None else list(weights), len(parents))
    except ConfigError as e:
        raise CompositionError(str(e)) from None
    _check_output(output)  # before any parent is fetched or merged
    resolved = [resolve_adapter(p, store=store, token=token) for p in parents]
    inside = parent_inside(output, parents, resolved)
    if inside:
        raise CompositionError(inside)
    files = [peftlab.read_adapter(r.path) for r in resolved]
    base, task = _common_base(parents, files)
    options = {"svd_rank": svd_rank, "density": density, "majority_sign": majority_sign, "seed": seed}
    for arg, f in zip(parents, files, strict=True):
        if not f.method.capabilities.combinations:
            why = f.method.capabilities.combine_note or "it declares no combination types"
            raise CompositionError(f"{arg}: {f.method.name} adapters cannot be combined: {why}")
    combiner, inputs = _common_form(parents, files)
    supported = combiner.capabilities.combinations
    if combination not in supported:
        raise CompositionError(f"{combiner.name} adapters combine by {', '.join(supported)}, not {combination!r}")
    result = combiner.hook("combine")(parents=inputs, weights=weights, combination=combination, options=options)
    if result is None:
        raise CompositionError(f"method {combiner.name} declares combinations but implements no combine hook")
    cfg, tensors = result
    bad = sorted(k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if bad:  # whatever the method's maths, an adapter of NaN or inf is no adapter: nothing is written
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise CompositionError(f"the {combination} merge gave NaN or inf values (in {bad[0]}{more}); nothing written")
    cfg = {**cfg, "task_type": task, "base_model_name_or_path": base, "revision": None, "inference_mode": True}
    handle, cfg = _result_method(files, cfg)
    handle.config_class.from_dict(cfg, source="the merged adapter")  # it must load as written
    meta = {
        "method": handle.name,
        "plugin": handle.plugin,
        "peftlab_version": peftlab.__version__,
        "adapter_name": "default",
        "base_model": base,
        "base_fingerprint": files[0].meta.get("base_fingerprint"),
        "task_type": task,
        "extra_file": None,
        "composition": {
            "parents": [_parent_record(a, r, f) for a, r, f in zip(parents, resolved, files, strict=True)],
            "weights": weights,
            "combination": combination,
            "options": options,
        },
    }
    meta = {k: v for k, v in meta.items() if v is not None or k == "extra_file"}

    def write(tmp: Path) -> None:
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")
        (tmp / CARD_FILE).write_text(model_card(handle, cfg, {"training": {"composition": meta["composition"]}}))

    return atomic_dir(_check_output(output), write)


def _check_output(output: str | os.PathLike) -> Path:
    """``output`` if the merged adapter may go there: a new or empty folder, or an adapter's (replaced whole);
    ``atomic_dir`` swaps the whole folder, so a folder of other files would lose them."""
    check_output_dir(output)
    return check_replaceable(output, holds_adapter, "adapter", "the merged adapter")


def _result_method(files: list[AdapterFiles], cfg: dict) -> tuple[Any, dict]:
    """The method the merged adapter is labelled with, and its config: the one that loads its ``peft_type`` (as for
    peft's), unless every parent is of one method that writes that ``peft_type`` too (QLoRA, whose adapters are LoRA
    on disk): then the parents' method, with the settings it adds to the loading method's (the 4-bit quantization of
    the base) where all parents agree on them; where they disagree, the plain method (a base for each parent)."""
    plain = registry().for_peft_type(cfg["peft_type"], cfg)
    own = files[0].method
    if len({f.method.name for f in files}) > 1 or own.peft_type != cfg["peft_type"] or own.name == plain.name:
        return plain, cfg
    extra = {f.name for f in dataclasses.fields(own.config_class)} - {
        f.name for f in dataclasses.fields(plain.config_class)
    }
    first = files[0].peft_config
    if any(f.peft_config.get(k) != first.get(k) for f in files for k in extra):
        return plain, cfg
    return own, {**cfg, **{k: first[k] for k in sorted(extra) if k in first and k not in cfg}}


def _common_base(parents: list, files: list[AdapterFiles]) -> tuple[str, str]:
    bases = {str(a): f.peft_config.get("base_model_name_or_path") for a, f in zip(parents, files, strict=True)}
    if len(set(bases.values())) > 1:
        listed = "; ".join(f"{a}: {b}" for a, b in bases.items())
        raise CompositionError(f"the parents were made for different base models ({listed}); a merge needs one base")
    tasks = {f.peft_config.get("task_type") for f in files}
    if len(tasks) > 1:
        raise CompositionError(f"the parents are for different tasks ({sorted(map(str, tasks))})")
    return next(iter(bases.values())), tasks.pop()


def _common_form(parents: list, files: list[AdapterFiles]) -> tuple[Any, list[AdapterFiles]]:
    """The method that merges, and the parents in its form (see the module's docstring)."""
    if len({f.method.name for f in files}) == 1:
        return files[0].method, files
    converted = []
    for arg, f in zip(parents, files, strict=True):
        if "cat" not in f.method.capabilities.combinations:
            raise CompositionError(
                f"{arg}: {f.method.name} cannot be merged with adapters of other methods (it "
                "has no exact 'cat' combination to bring it to their form)"
            )
        cfg, tensors = f.method.hook("combine")(parents=[f], weights=[1.0], combination="cat", options={})
        converted.append((f, cfg, tensors))
    types = {cfg["peft_type"] for _, cfg, _ in converted}
    if len(types) > 1:
        methods = sorted({f.method.name for f in files})
        raise CompositionError(
            f"adapters of {', '.join(methods)} have no common form to merge in ({', '.join(sorted(types))})"
        )
    cfg0 = converted[0][1]
    combiner = registry().for_peft_type(cfg0["peft_type"], cfg0)
    inputs = []
    for f, cfg, tensors in converted:
        if _in_form(f, combiner):  # as it is: its scaling kept apart from its factors, as a parent of one method's
            names = {x.name for x in dataclasses.fields(combiner.config_class)}
            own = {k: v for k, v in f.peft_config.items() if k in names or k in CORE_KEYS}
            config = combiner.config_class.from_dict(own, source=str(f.path))
            inputs.append(replace(f, method=combiner, config=config, peft_config=own))
            continue
        config = combiner.config_class.from_dict(cfg, source=str(f.path))
        inputs.append(
            replace(
                f, method=combiner, config=config, weights=AdapterWeights(tensors), peft_config={**f.peft_config, **cfg}
            )
        )
    return combiner, inputs


def _in_form(f: AdapterFiles, combiner) -> bool:
    """Whether parent ``f`` is already in the merging method's form: the same ``peft_type``, a config that extends
    the merger's (QLoRA's is LoRA's plus the base's quantization) and no state of its own besides. Its converted
    copy would fold its scaling into its factors, which the factor-level types (TIES' sign election) see."""
    return (
        f.method.peft_type == combiner.peft_type
        and issubclass(f.method.config_class, combiner.config_class)
        and not f.weights.extra
    )


def _parent_record(arg, r: ResolvedAdapter, f: AdapterFiles) -> dict:
    weights_file = f.path / WEIGHTS_FILE
    if not weights_file.is_file():
        raise AdapterError(f"{f.path}: {WEIGHTS_FILE} is missing")
    return {
        "arg": str(arg),
        "source": r.source,
        "path": str(r.path),
        "method": f.method.name,
        "provenance": r.provenance,
        "weights_sha256": sha256_file(weights_file),
    }
