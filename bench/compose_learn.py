"""The learned-composition demo (issue #10): two LoRAs of SmolLM2, one per task, mixed by learned weights.

``python -m bench.compose_learn [--steps 40] [--train-lr 2e-3] [--learn-rows 16] [--test-rows 34] [--budget 20]
[--grad-steps 12] [--lr 0.15] [--l1 0.05] [--objective match|worst|row|token]``

1. Trains one LoRA (r=8, α=16, q_proj/v_proj) on ``capitals-json`` and one on ``iso-dates`` (``--steps`` of batch 8
   at ``--train-lr``, each task's training split; cached per setting in
   ``bench/results/compose_learn/parents/steps<S>-lr<LR>/`` (``--parents-dir``) and reused when there).
2. Takes each task's held-out rows (its ``eval`` split of 50, which training never sees) and splits them in two
   disjoint parts: ``--learn-rows`` per task form the small mixed set the weights are learned on, the next
   ``--test-rows`` per task the held-out mix the table is measured on.
3. On one base model (loaded once), measures on the test mix: each parent alone, the uniform average (½, ½), and the
   two learned mixtures (``peftlab_hub.learn``: nevergrad, LoRAHub-style; gradient descent on the two scalars), both
   minimising ``--objective`` (default ``match``, as ``learn``'s: 1 − exact match on the learning rows plus the
   worst-token loss; the gradient learner descends on the worst-token loss). Eval loss both ways (token-weighted, as
   core's ``eval_loss``; row: task-balanced, from the same forward passes) and exact match (greedy generation:
   reply == reference, core's ``exact_match``).

The defaults are the setting that made both learned mixtures beat every parent and the uniform average on exact
match as well as on eval loss: parents of 40 steps (10-step parents were too weak: each alone got 0.54 / 0.62 on its
own task, and no learned mixture beat the better parent on the mix), 16 learning rows per task, the ``match``
objective.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from peftlab_hub.learn import OBJECTIVES

ROOT = Path(__file__).resolve().parent
WORK = ROOT / "results" / "compose_learn"
TASKS = {"capitals": "capitals-json", "dates": "iso-dates"}


def train_parents(steps: int, lr: float, threads: int, root: Path | None = None) -> dict[str, Path]:
    """One LoRA per task, trained once per setting: ``<root>/steps<steps>-lr<lr>/<task>/adapter`` is reused when
    there (training is seeded, so a cached parent is the one this call would train)."""
    from peftlab.train import TrainArgs, train

    out = {}
    for name, dataset in TASKS.items():
        folder = (root or WORK / "parents") / f"steps{steps}-lr{lr:g}" / name
        if not (folder / "adapter" / "adapter_model.safetensors").exists():
            t = time.time()
            r = train(
                TrainArgs(
                    method="lora",
                    dataset=dataset,
                    output_dir=str(folder),
                    max_steps=steps,
                    learning_rate=lr,
                    batch_size=8,
                    max_length=128,
                    save_every=0,
                    save_minutes=0,
                    max_eval_samples=16,
                    threads=threads,
                    seed=0,
                    method_config={"r": 8, "lora_alpha": 16},
                )
            )
            print(
                f"[compose_learn] trained {name}: eval loss {r.eval_loss_before:.3f} -> {r.eval_loss_after:.3f} "
                f"({time.time() - t:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
        out[name] = folder / "adapter"
    return out


def held_out(learn_rows: int, test_rows: int) -> tuple[list[dict], dict[str, list[dict]]]:
    """Each task's eval split, cut into a learning part and a disjoint test part: the learning rows of both tasks
    interleaved, and the test rows by task."""
    from peftlab.data import load_rows, split_rows

    learn, test = [], {}
    for name, dataset in TASKS.items():
        rows = split_rows(load_rows(dataset), 0.1, 0)[1]
        if len(rows) < learn_rows + test_rows:
            raise SystemExit(f"{dataset} has {len(rows)} held-out rows, fewer than {learn_rows} + {test_rows}")
        learn.append(rows[:learn_rows])
        test[name] = rows[learn_rows : learn_rows + test_rows]
    return [r for pair in zip(*learn) for r in pair], test


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.compose_learn", description=__doc__)
    p.add_argument("--steps", type=int, default=40, help="training steps per parent (batch 8)")
    p.add_argument("--train-lr", type=float, default=2e-3, help="the parents' peak learning rate")
    p.add_argument(
        "--parents-dir", type=Path, default=WORK / "parents", help="where trained parents are cached (per setting)"
    )
    p.add_argument("--learn-rows", type=int, default=16, help="rows per task the weights are learned on")
    p.add_argument("--test-rows", type=int, default=34, help="held-out rows per task the table is measured on")
    p.add_argument("--budget", type=int, default=20, help="nevergrad: evaluations")
    p.add_argument("--grad-steps", type=int, default=12, help="gradient: steps")
    p.add_argument("--lr", type=float, default=0.15, help="gradient: Adam's learning rate")
    p.add_argument("--l1", type=float, default=0.05, help="L1 penalty on the weights (LoRAHub's default)")
    p.add_argument("--objective", choices=OBJECTIVES, default="match", help="what the learners minimise")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)

    import torch

    from peftlab_hub.learn import learn
    from peftlab_hub.sweep import Mixture

    torch.set_num_threads(a.threads)
    t0 = time.time()
    parents = train_parents(a.steps, a.train_lr, a.threads, a.parents_dir)
    learn_rows, by_task = held_out(a.learn_rows, a.test_rows)
    test_rows = [r for pair in zip(*by_task.values()) for r in pair]
    WORK.mkdir(parents=True, exist_ok=True)
    learn_file = WORK / "learn_rows.jsonl"
    learn_file.write_text("".join(json.dumps(r) + "\n" for r in learn_rows))
    folders = [parents["capitals"], parents["dates"]]
    mixture = Mixture(folders, dtype="float32", device="cpu")
    shutil.rmtree(WORK / "learned", ignore_errors=True)
    learned = learn(
        folders,
        str(learn_file),
        output=WORK / "learned",
        budget=a.budget,
        steps=a.grad_steps,
        lr=a.lr,
        l1=a.l1,
        objective=a.objective,
        max_length=128,
        mixture=mixture,
    )
    items = mixture.encode(test_rows, 128)
    candidates = {
        "capitals parent alone": [1.0, 0.0],
        "dates parent alone": [0.0, 1.0],
        "uniform average": [0.5, 0.5],
        "learned: nevergrad": learned["learned"]["nevergrad"]["weights"],
        "learned: gradient": learned["learned"]["gradient"]["weights"],
    }
    table = {}
    for label, weights in candidates.items():
        t = time.time()
        mixture.apply(weights)
        token_loss, row_loss = both_losses(mixture, items)
        row = {"weights": weights, "eval_loss": token_loss, "row_loss": row_loss, "exact_match": {}}
        for task, rows in by_task.items():
            row["exact_match"][task] = mixture.exact_match(rows, 16, a.max_new_tokens)
        row["exact_match"]["mix"] = sum(row["exact_match"][t] * len(by_task[t]) for t in by_task) / len(test_rows)
        table[label] = row
        print(f"[compose_learn] {label}: {json.dumps(row)} ({time.time() - t:.0f} s)", file=sys.stderr, flush=True)
    result = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
        "learn_rows": len(learn_rows),
        "test_rows": len(test_rows),
        "learn": {k: v for k, v in learned.items() if k != "learned"}
        | {"learned": {k: {kk: vv for kk, vv in v.items() if kk != "trace"} for k, v in learned["learned"].items()}},
        "table": table,
        "seconds": round(time.time() - t0, 1),
    }
    (WORK / "table.json").write_text(json.dumps(result, indent=2))
    print(markdown(result))
    return 0


def both_losses(mixture, items: list[dict], batch_size: int = 8) -> tuple[float, float]:
    """The token-weighted eval loss (core's ``eval_loss``) and the row (task-balanced) loss, from one forward pass
    per batch: each row's mean token loss and its count of loss tokens."""
    import torch

    from peftlab.data import collate

    total = count = row_sum = 0.0
    mixture.model.eval()
    with torch.no_grad():
        for i in range(0, len(items), batch_size):
            batch = collate(items[i : i + batch_size], mixture.pad_id)
            per_row = mixture.row_losses(batch)
            n = (batch["labels"][:, 1:] != -100).sum(1)
            total += float((per_row * n).sum())
            count += float(n.sum())
            row_sum += float(per_row.sum())
    return total / max(count, 1), row_sum / max(len(items), 1)


def markdown(result: dict) -> str:
    table = result["table"]
    others = ("capitals parent alone", "dates parent alone", "uniform average")
    best = {k: min(table[o].get(k, float("inf")) for o in others) for k in ("eval_loss", "row_loss")}
    best_em = max(table[o]["exact_match"]["mix"] for o in others)
    lines = [
        f"Held-out mix: {result['test_rows']} rows ({result['test_rows'] // 2} per task); weights learned on "
        f"{result['learn_rows']} other held-out rows, objective "
        f"{result['learn'].get('settings', {}).get('objective', 'token')}. Uniform-mixture objective on the learning "
        f"rows: {result['learn']['uniform']['loss']:.4f}. **↓** / **↑**: better than every parent and the uniform "
        "average.",
        "",
        "| mixture | w (capitals, dates) | eval loss (token) | eval loss (row) | exact match capitals "
        "| exact match dates | exact match mix |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for label, r in table.items():
        em = r["exact_match"]
        learned = label.startswith("learned")

        def cell(k: str, r=r, learned=learned) -> str:
            mark = " **↓**" if learned and r[k] < best[k] else ""
            return f"{r[k]:.4f}{mark}"

        em_mark = " **↑**" if learned and em["mix"] > best_em else ""
        lines.append(
            f"| {label} | {r['weights'][0]:.3f}, {r['weights'][1]:.3f} | {cell('eval_loss')} | {cell('row_loss')} | "
            f"{em['capitals']:.3f} | {em['dates']:.3f} | {em['mix']:.3f}{em_mark} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
