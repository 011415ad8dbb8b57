"""Learned mixtures (``peftlab compose PARENT... --learn DATASET``): the weights of N adapters, found on a few rows.

Two learners, both on causal LMs, both on one base model loaded once (``sweep.Mixture``), both minimising the same
loss plus ``l1 · Σ|wᵢ|``. The loss is chosen by ``objective``:

* ``"row"`` — task-balanced: the mean over rows of each row's own mean token loss, so every row counts the same
  whatever its length (a task with long replies does not outweigh one with short replies);
* ``"token"`` — core's token-weighted eval loss (every loss token counts the same, so long rows count more);
* ``"worst"`` — the mean over rows of each row's worst (highest-loss) reply token: greedy exact match fails on a row
  as soon as one reply token is not the model's top choice, so this is a differentiable stand-in for exact match;
* ``"match"`` (the default) — ``1 − exact match`` on the rows plus the ``worst`` loss (which ranks mixtures of equal
  match).
  Exact match is greedy decoding's, read off the same forward pass without generating (``Mixture.row_stats``: a row
  matches when each of its reply tokens is the model's top choice). nevergrad scores it as it is; the gradient
  learner descends on its differentiable part, the ``worst`` loss. It is the default because the rows a mixture is
  learned on are usually short answers scored by exact match: on the built-in demo (``bench/compose_learn.py``)
  it gave both learners higher held-out exact match than ``row`` (which lowers the mean loss and let the weights
  sit where one task's replies stop being exact). For free-text replies, where exact match means little, use
  ``row``.

The learners:

* ``nevergrad`` — gradient-free, in the LoRAHub manner: weights bounded to ``bounds`` (default [-1.5, 1.5]), the
  objective the loss on the rows plus ``l1 · Σ|wᵢ|``, a ``budget`` of evaluations (each one pass over the
  rows) by nevergrad's ``NGOpt``; the best point evaluated is kept (the objective is deterministic).
* ``gradient`` — gradient descent on the N mixing scalars only: each parent's weight is a 0-dim tensor handed to
  ``peftlab.adapters.set_weight`` (parents of scalable methods), every model parameter frozen; core's micro-batches
  (``train._batches``), the batch's loss by ``objective`` (the mean of its rows' own or worst-token losses, or the
  model's own token-mean loss) and core's LR schedule (``train.lr_lambda``), Adam, the same
  L1 penalty, weights projected back into ``bounds`` after each step.

Both start at the uniform mixture (1/N each). The result: the weights, one composition per learner written with
``compose`` (default ``cat``: exactly ``Σ wᵢ ΔWᵢ``) or as a recipe (``combination="stack"``), and ``learn.json``
with every learner's search trace.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .sweep import OBJECTIVES, _add_common, _log, check_objective, check_weights, objective_loss, pick_rows

if TYPE_CHECKING:  # the CLI builds its parser from this module: torch and the model code load when used
    from .store import AdapterStore
    from .sweep import Mixture

LEARN_JSON = "learn.json"
LEARNERS = ("nevergrad", "gradient")
OBJECTIVE_HELP = {
    "row": "task-balanced: each row's mean token loss, averaged over rows, whatever their lengths",
    "token": "token-weighted eval loss: every reply token counts the same, so long replies weigh more",
    "worst": "each row's worst (highest-loss) reply token, averaged over rows: greedy exact match fails on a row as "
    "soon as one reply token is not the model's top choice, so this pushes every row's hardest token (a "
    "differentiable stand-in for exact match)",
    "match": "1 - greedy exact match on the rows, plus the worst-token loss to rank mixtures of equal match; exact "
    "match is read off the same forward pass (a row matches when each of its reply tokens is the model's top "
    "choice), no generation; the gradient learner descends on the worst-token part (exact match has no gradient)",
}
STACK = "stack"  # combination: a composition recipe (peftlab_hub.stack) instead of a merge


@dataclass
class Learned:
    """One learner's outcome: ``weights``, the loss (by the objective) and the objective (loss + L1 penalty) at
    them, greedy exact match on the rows there (``match``) and its ``trace`` (one entry per evaluation or step)."""

    learner: str
    weights: list[float]
    loss: float
    objective: float
    trace: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    composition: str | None = None
    match: float | None = None

    def to_json(self) -> dict:
        return {
            "learner": self.learner,
            "weights": self.weights,
            "loss": self.loss,
            "objective": self.objective,
            "match": self.match,
            "seconds": round(self.seconds, 2),
            "composition": self.composition,
            "trace": self.trace,
        }


def _check_bounds(bounds: Sequence[float]) -> tuple[float, float]:
    from .compose import CompositionError

    lo, hi = check_weights(bounds, 2, "bounds")
    if not lo < hi:
        raise CompositionError(f"bounds: the lower bound {lo} must be below the upper bound {hi}")
    return lo, hi


def score(mixture: Mixture, items: list[dict], batch_size: int, objective: str) -> tuple[float, float]:
    """The current mixture's loss by ``objective`` and its greedy exact match on ``items``, from one pass."""
    s = mixture.scores(items, batch_size)
    return objective_loss(s, objective), s["match"]


def learn_nevergrad(
    mixture: Mixture,
    items: list[dict],
    *,
    budget: int = 40,
    bounds: tuple[float, float] = (-1.5, 1.5),
    l1: float = 0.05,
    init: Sequence[float] | None = None,
    batch_size: int = 8,
    seed: int = 0,
    objective: str = "match",
    quiet: bool = False,
) -> Learned:
    """LoRAHub's search: minimise ``loss(w) + l1 · Σ|wᵢ|`` over ``w`` in ``bounds`` with nevergrad's ``NGOpt`` in
    ``budget`` evaluations, from ``init`` (default: uniform); ``loss`` is the rows' loss by ``objective`` (see
    ``OBJECTIVES``: ``row``, ``token``, ``worst``, ``match``). Returns the best point evaluated."""
    from .compose import CompositionError

    check_objective(objective)
    try:
        import nevergrad as ng
        import numpy as np
    except ImportError:
        raise CompositionError(
            "the gradient-free learner needs nevergrad: pip install 'peftlab-hub[learn]' (or nevergrad)"
        ) from None
    n = len(mixture.parents)
    if budget < 1:
        raise CompositionError(f"budget must be at least 1 evaluation, got {budget}")
    lo, hi = bounds
    start = np.clip(np.array(init if init is not None else [1.0 / n] * n, dtype=float), lo, hi)
    param = ng.p.Array(init=start, lower=lo, upper=hi)
    param.random_state = np.random.RandomState(seed)
    opt = ng.optimizers.NGOpt(parametrization=param, budget=budget)
    trace: list[dict] = []
    t0 = time.time()

    def evaluate(w: np.ndarray) -> float:
        weights = [float(x) for x in w]
        mixture.apply(weights)
        loss, match = score(mixture, items, batch_size, objective)
        value = loss + l1 * sum(abs(x) for x in weights)
        trace.append({"eval": len(trace) + 1, "weights": weights, "loss": loss, "match": match, "objective": value})
        _log(
            f"learn[nevergrad]: {len(trace)}/{budget} w={_fmt(weights)}: loss {loss:.4f}, exact match {match:.3f}, "
            f"objective {value:.4f}",
            quiet,
        )
        return value

    with warnings.catch_warnings():  # NGOpt's COBYLA stage warns about its own default tolerance
        warnings.filterwarnings("ignore", message=".*RHOEND.*")
        for _ in range(budget):
            cand = opt.ask()
            opt.tell(cand, evaluate(cand.value))
    best = min(trace, key=lambda t: t["objective"])
    return Learned(
        "nevergrad", best["weights"], best["loss"], best["objective"], trace, time.time() - t0, match=best["match"]
    )


def learn_gradient(
    mixture: Mixture,
    items: list[dict],
    *,
    steps: int = 30,
    lr: float = 0.05,
    bounds: tuple[float, float] = (-1.5, 1.5),
    l1: float = 0.05,
    init: Sequence[float] | None = None,
    batch_size: int = 8,
    warmup_ratio: float = 0.0,
    lr_scheduler: str = "constant",
    seed: int = 0,
    objective: str = "match",
    quiet: bool = False,
) -> Learned:
    """Gradient descent on the mixing scalars only (Adam, ``steps`` micro-batches of core's shuffled batching), the
    parents' weights as 0-dim tensors through ``set_weight``; each batch's loss by ``objective`` (``row``: the mean of
    its rows' own mean token losses, ``token``: the model's token-mean loss, ``worst`` and ``match``: the mean of its
    rows' worst-token losses). Returns the last weights, their loss by ``objective`` on all rows (``match``: with
    ``1 − exact match``) and their exact match."""
    import torch

    from peftlab.train import _batches, lr_lambda

    from .compose import CompositionError

    if mixture.mode != "scale":
        raise CompositionError(
            "the gradient learner weights each parent through set_weight, which needs parents of scalable methods "
            "(capabilities.scalable); use the nevergrad learner for these"
        )
    if steps < 1:
        raise CompositionError(f"steps must be at least 1, got {steps}")
    check_objective(objective)
    if not 0 < lr < math.inf:
        raise CompositionError(f"lr must be a positive number, got {lr}")
    n = len(mixture.parents)
    lo, hi = bounds
    device = next(mixture.model.parameters()).device
    start = [min(max(float(x), lo), hi) for x in (init if init is not None else [1.0 / n] * n)]
    weights = [torch.tensor(x, dtype=torch.float32, device=device, requires_grad=True) for x in start]
    optimizer = torch.optim.Adam(weights, lr=lr)
    warmup = int(warmup_ratio * steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(lr_scheduler, warmup, steps))
    model = mixture.model
    batches = _batches(items, batch_size, seed, mixture.pad_id)
    trace: list[dict] = []
    t0 = time.time()
    was_training = model.training
    model.eval()  # no dropout: the weights are what changes
    try:
        mixture.apply(weights)
        for step in range(1, steps + 1):
            batch = {k: v.to(device) for k, v in next(batches).items()}
            if objective == "token":
                loss = model(**batch).loss
            else:
                loss = mixture.row_stats(batch)["row" if objective == "row" else "worst"].mean()
            penalty = l1 * sum(w.abs() for w in weights)
            (loss + penalty).backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            with torch.no_grad():
                for w in weights:
                    w.clamp_(lo, hi)
            now = [float(w.detach()) for w in weights]
            value, total = float(loss.detach()), float((loss + penalty).detach())
            trace.append({"step": step, "weights": now, "batch_loss": value, "objective": total})
            _log(f"learn[gradient]: step {step}/{steps} batch loss {value:.4f} -> w={_fmt(now)}", quiet)
    finally:
        model.train(was_training)
    final = [float(w.detach()) for w in weights]
    mixture.apply(final)  # plain floats again: no graph is kept
    loss, match = score(mixture, items, batch_size, objective)
    return Learned(
        "gradient",
        final,
        loss,
        loss + l1 * sum(abs(x) for x in final),
        trace,
        time.time() - t0,
        match=match,
    )


def _fmt(weights: Sequence[float]) -> str:
    return "[" + ", ".join(f"{w:.3f}" for w in weights) + "]"


def learn(
    parents: Sequence[str | os.PathLike],
    dataset: str,
    *,
    output: str | os.PathLike | None = None,
    learners: Sequence[str] = LEARNERS,
    combination: str = "cat",
    bounds: Sequence[float] = (-1.5, 1.5),
    l1: float = 0.05,
    budget: int = 40,
    steps: int = 30,
    lr: float = 0.05,
    init: Sequence[float] | None = None,
    objective: str = "match",
    split: str = "all",
    max_samples: int = 100,
    batch_size: int = 8,
    max_length: int = 256,
    seed: int = 0,
    base: str | None = None,
    store: AdapterStore | None = None,
    token: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    mixture: Mixture | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Learn the weights of ``parents`` on ``dataset``'s rows (``split``: all rows by default, at most
    ``max_samples``; 5–100 rows is the intended size) with each of ``learners`` (``nevergrad``, ``gradient``).
    ``objective``: what both learners minimise (plus the L1 penalty), and the loss reported for the uniform mixture
    and each learner: ``"match"`` (default: ``1 − exact match`` plus the worst-token loss; the gradient learner
    descends on the latter), ``"worst"`` (the mean over rows of each row's worst-token loss: a differentiable
    stand-in for exact match), ``"row"`` (task-balanced: the mean over rows of each row's own mean token loss, every
    row counting the same whatever its length; for free-text replies) or ``"token"`` (core's token-weighted eval
    loss, where long replies weigh more). Exact match on the rows (``match``, greedy decoding's, read off the same
    forward passes) is reported for the uniform mixture, each learner and each nevergrad evaluation, whatever the
    objective. With ``output``, writes atomically: ``learn.json`` (settings, the uniform mixture's loss and exact
    match, each learner's weights and trace) and one composition per learner, ``<learner>/``:
    ``compose(parents, weights, combination)``, or with ``combination="stack"`` a recipe (``stack(parents,
    weights)``) that loads the parents together.
    Returns what ``learn.json`` holds."""
    from peftlab import data as pdata
    from peftlab.io import atomic_dir, check_output_dir, check_replaceable

    from .compose import CompositionError, compose
    from .sweep import Mixture

    learners = list(learners)
    unknown = [x for x in learners if x not in LEARNERS]
    if not learners or unknown:
        raise CompositionError(f"learners: {', '.join(unknown) or 'none given'}; choose from {', '.join(LEARNERS)}")
    lo_hi = _check_bounds(bounds)
    check_objective(objective)
    if not l1 >= 0 or not math.isfinite(l1):
        raise CompositionError(f"l1 must be a finite number >= 0, got {l1}")
    if init is not None:
        init = check_weights(init, len(parents), "init")
    if output is not None:
        check_output_dir(output)
        check_replaceable(output, lambda p: (p / LEARN_JSON).is_file(), "learned mixture", "the learned mixtures")
    if len(parents) < 2:
        raise CompositionError(f"learning a mixture needs at least two parents, got {len(parents)}")
    if max_samples is not None and max_samples < 1:
        raise CompositionError(f"max_samples must be at least 1, got {max_samples}")
    rows = pick_rows(dataset, split, max_samples, seed)
    if pdata.dataset_task(rows) != "CAUSAL_LM":
        raise CompositionError(f"dataset {dataset}: learned mixtures are for causal-LM rows (chat or text)")
    t0 = time.time()
    if mixture is None:
        _log(f"learn: loading the base model and {len(parents)} parents", quiet)
        mixture = Mixture(parents, base=base, store=store, token=token, device=device, dtype=dtype)
    items = mixture.encode(rows, max_length)
    n = len(parents)
    uniform = [1.0 / n] * n
    mixture.apply(uniform)
    uniform_loss, uniform_match = score(mixture, items, batch_size, objective)
    _log(
        f"learn: {len(rows)} rows; uniform mixture {_fmt(uniform)}: {objective} loss {uniform_loss:.4f}, "
        f"exact match {uniform_match:.3f}",
        quiet,
    )
    common = dict(bounds=lo_hi, l1=l1, init=init, batch_size=batch_size, seed=seed, objective=objective, quiet=quiet)
    results: dict[str, Learned] = {}
    for name in learners:
        if name == "nevergrad":
            results[name] = learn_nevergrad(mixture, items, budget=budget, **common)
        else:
            results[name] = learn_gradient(mixture, items, steps=steps, lr=lr, **common)
        r = results[name]
        _log(
            f"learn[{name}]: weights {_fmt(r.weights)}, loss {r.loss:.4f} (uniform {uniform_loss:.4f}), exact match "
            f"{r.match:.3f} (uniform {uniform_match:.3f})",
            quiet,
        )
    result: dict[str, Any] = {
        "parents": [
            {"arg": a, "path": str(r.path), "method": f.method.name}
            for a, r, f in zip(mixture.parents, mixture.resolved, mixture.files, strict=True)
        ],
        "dataset": dataset,
        "split": split,
        "rows": len(rows),
        "mode": mixture.mode,
        "settings": {
            "objective": objective,
            "bounds": list(lo_hi),
            "l1": l1,
            "budget": budget,
            "steps": steps,
            "lr": lr,
            "init": init or uniform,
            "batch_size": batch_size,
            "max_length": max_length,
            "seed": seed,
            "combination": combination,
        },
        "uniform": {"weights": uniform, "loss": uniform_loss, "match": uniform_match},
        "learned": {k: v.to_json() for k, v in results.items()},
    }
    if output is not None:
        out = Path(output)

        def write(tmp: Path) -> None:
            for name, r in results.items():
                if combination == STACK:  # a recipe: the parents stay as they are, loaded together with the weights
                    from .stack import stack

                    stack(mixture.parents, r.weights, output=tmp / name, store=store, token=token)
                else:
                    kw = dict(store=store, token=token, seed=seed)
                    compose(mixture.parents, r.weights, combination, output=tmp / name, **kw)
                result["learned"][name]["composition"] = str(out / name)
            (tmp / LEARN_JSON).write_text(json.dumps(result, indent=2) + "\n")

        atomic_dir(out, write)
        result["output"] = str(out)
        _log(f"learn: wrote {out / LEARN_JSON} and {', '.join(str(out / k) for k in results)}", quiet)
    result["seconds"] = round(time.time() - t0, 2)
    return result


# --- the CLI: `peftlab compose PARENT... --learn DATASET --output DIR` ------------------------------------------


def add_learn_arguments(parser) -> None:
    """Add ``--learn DATASET`` and its options to ``peftlab compose``'s parser (``--output``, ``--combination`` and
    ``--seed`` are compose's)."""
    g = parser.add_argument_group("learned mixtures (--learn)")
    g.add_argument(
        "--learn",
        metavar="DATASET",
        default=None,
        help="instead of merging with given weights, learn them on DATASET (5-100 rows; built-in name or data "
        "file) and write learn.json and one composition per learner to --output (merged by --combination; "
        "--combination stack: a recipe) (default: no learning, the given weights)",
    )
    g.add_argument(
        "--learner",
        nargs="+",
        default=list(LEARNERS),
        choices=LEARNERS,
        help="nevergrad: gradient-free search (LoRAHub); gradient: descent on the mixing scalars (default: both)",
    )
    g.add_argument("--budget", type=int, default=40, help="nevergrad: evaluations of the rows (default: 40)")
    g.add_argument("--steps", type=int, default=30, help="gradient: optimizer steps (default: 30)")
    g.add_argument("--lr", type=float, default=0.05, help="gradient: Adam's learning rate (default: 0.05)")
    g.add_argument("--l1", type=float, default=0.05, help="L1 penalty on the weights (default: 0.05)")
    g.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default="match",
        help="what both learners minimise (plus the L1 penalty): "
        + "; ".join(f"{k}: {v}" for k, v in OBJECTIVE_HELP.items())
        + " (default: match; for free-text replies, where exact match means little: row)",
    )
    g.add_argument(
        "--bounds", type=float, nargs=2, default=(-1.5, 1.5), metavar=("LO", "HI"), help="the range of each weight"
    )
    _add_common(parser)


def run_learn(args) -> int:
    """``peftlab compose A B ... --learn DATASET --output DIR``: print each learner's weights (``--json``: all)."""
    result = learn(
        args.parents,
        args.learn,
        output=args.output,
        learners=args.learner,
        combination=args.combination,
        bounds=args.bounds,
        l1=args.l1,
        budget=args.budget,
        steps=args.steps,
        lr=args.lr,
        init=args.weights,
        objective=args.objective,
        split=args.split or "all",
        max_samples=args.max_samples or 100,
        batch_size=args.batch_size,
        max_length=args.max_length,
        seed=args.seed,
        base=args.base,
        token=getattr(args, "token", None),
        device=args.device,
        dtype=args.dtype,
    )
    if getattr(args, "json", False):
        print(json.dumps(result, indent=2), flush=True)
        return 0
    print(f"{'mixture':<10} {'loss':>8}  weights")
    print(f"{'uniform':<10} {result['uniform']['loss']:>8.4f}  {_fmt(result['uniform']['weights'])}")
    for name, r in result["learned"].items():
        print(f"{name:<10} {r['loss']:>8.4f}  {_fmt(r['weights'])}  -> {r['composition']}")
    print(f"wrote {result['output']}/{LEARN_JSON}", flush=True)
    return 0
