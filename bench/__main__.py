"""``python -m bench lora|all|compare|<pair>...`` — see bench/__init__.py."""

from __future__ import annotations

import argparse
import sys

from .pairs import PAIRS, installed_pairs
from .report import pair_markdown
from .runner import RESULTS, bench_pair


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("what", nargs="+", help=f"'all', 'compare', or pair names: {', '.join(PAIRS)}")
    p.add_argument("--steps", type=int, default=30, help="optimizer steps per run (loss curve, eval after)")
    p.add_argument("--warmup", type=int, default=2, help="untimed first steps")
    p.add_argument("--timed", type=int, default=8, help="timed steps after the warm-up")
    p.add_argument("--repeats", type=int, default=2, help="rounds of (peftlab, peft)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--gen-reps", type=int, default=2, help="timed generate calls per stage (best is kept)")
    p.add_argument("--eval-samples", type=int, default=32, help="held-out rows for the eval loss")
    p.add_argument("--new-tokens", type=int, default=32, help="tokens generated per timed generate call")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--methods", default=None, help="compare: comma-separated methods (default: all installed)")
    a = p.parse_args(argv)

    if a.what == ["compare"]:
        from peftlab.compare import run_comparison, to_markdown

        methods = a.methods.split(",") if a.methods else None
        results = run_comparison(
            methods,
            steps=a.steps,
            out_dir=str(RESULTS / "compare"),
            on_result=lambda r: print(f"[compare] {r['method']}: {r.get('error') or 'ok'}", flush=True),
        )
        md = to_markdown(results)
        (RESULTS / "compare.md").write_text(md)
        print(md)
        return 0
    names = installed_pairs() if a.what == ["all"] else a.what
    unknown = [n for n in names if n not in PAIRS]
    if unknown:
        p.error(f"unknown pair(s) {unknown}; known: {', '.join(PAIRS)}")
    opts = {
        "steps": a.steps,
        "warmup": a.warmup,
        "timed": a.timed,
        "threads": a.threads,
        "gen_reps": a.gen_reps,
        "eval_samples": a.eval_samples,
        "new_tokens": a.new_tokens,
        "batch_size": a.batch_size,
        "max_length": a.max_length,
    }
    out = []
    for name in names:
        summary = bench_pair(name, a.repeats, opts, log=lambda m: print(m, flush=True))
        md = pair_markdown(summary)
        (RESULTS / f"{name}.md").write_text(md)
        print(md, flush=True)
        out.append(md)
    (RESULTS / ("all.md" if len(names) > 1 else f"{names[0]}.md")).write_text("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
