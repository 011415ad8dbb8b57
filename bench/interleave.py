"""Both variants in ONE process, alternating step by step: drift in machine load hits both equally.

``python -m bench.interleave lora --steps 3`` — timing only (memory needs a process per variant: bench.worker).
Each variant trains on the same batch sequence with its own AdamW; generation alternates call by call.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from .pairs import PAIRS
from .runner import RESULTS
from .worker import PeftlabVariant, PeftVariant, fixed_data, gen_speed, keep_4bit_trainable, log


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.interleave")
    p.add_argument("pair", choices=sorted(PAIRS))
    p.add_argument("--steps", type=int, default=4, help="timed steps per variant (after 1 warm-up step)")
    p.add_argument("--gen-reps", type=int, default=2)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    import peftlab
    from peftlab.generate import prompt_ids
    from peftlab.models import load_tokenizer

    torch.set_num_threads(a.threads)
    pair = PAIRS[a.pair]
    lr = peftlab.get_method(pair.method).train_defaults.get("learning_rate", 2e-3)
    tok = load_tokenizer(None)
    batches, _, rows = fixed_data(tok, "capitals-json", a.steps + 1, 8, 128, 0, 1)
    prompt = torch.tensor([prompt_ids(tok, rows[0]["messages"][:-1])])
    variants = {"peftlab": PeftlabVariant(pair, a.steps + 1), "peft": PeftVariant(pair, a.steps + 1)}
    opts = {}
    for name, v in variants.items():
        torch.manual_seed(0)
        v.load_base()
        v.inject()
        keep_4bit_trainable(v.model)
        params = v.trainable()
        opts[name] = (torch.optim.AdamW(params, lr=lr), params)
        v.model.train()
    times = {name: [] for name in variants}
    for i, batch in enumerate(batches):
        order = list(variants) if i % 2 == 0 else list(reversed(variants))  # ABBA: no side always goes first
        for name in order:
            v, (opt, params) = variants[name], opts[name]
            t = time.perf_counter()
            v.loss(batch).backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            v.after_step(i + 1)
            opt.zero_grad(set_to_none=True)
            times[name].append(time.perf_counter() - t)
            log(f"{name} step {i + 1}: {times[name][-1]:.1f}s")
    gen = {name: [] for name in variants}
    for k in range(a.gen_reps):
        for name in list(variants) if k % 2 == 0 else list(reversed(variants)):
            gen[name].append(gen_speed(variants[name].model, prompt, tok.pad_token_id, a.new_tokens, 1)[0])
            log(f"{name} generate {gen[name][-1]:.2f} tok/s")
    res = {
        "pair": a.pair,
        "threads": a.threads,
        "loadavg_end": os.getloadavg()[0],
        "step_times": times,
        "gen_tok_s": gen,
        "new_tokens": a.new_tokens,
    }
    for name in variants:
        res[f"{name}_step_median_s"] = statistics.median(times[name][1:])
        res[f"{name}_gen_best_tok_s"] = max(gen[name])
    res["step_ratio"] = res["peftlab_step_median_s"] / res["peft_step_median_s"]
    res["gen_ratio"] = res["peftlab_gen_best_tok_s"] / res["peft_gen_best_tok_s"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{a.pair}-interleaved.json").write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if not isinstance(v, dict)}, indent=1))


if __name__ == "__main__":
    main()
