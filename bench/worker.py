"""One variant (peftlab or peft) of one pair, in its own process: train, time, measure, write JSON.

``python -m bench.worker --pair lora --impl peftlab --out run.json [--steps 30 ...]``
Both variants run the SAME loop: fixed batches, torch AdamW at a constant LR, clipping at 1.0, the same seed
and thread count. Only the method implementation differs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .pairs import PAIRS, Pair


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def rss_now_mb() -> float:
    """The process's resident memory now (not the high-water mark, which loading the base model sets)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def fixed_data(
    tokenizer, dataset: str, n_batches: int, batch_size: int, max_length: int, seed: int, eval_samples: int
) -> tuple[list[dict], list[dict], list[dict]]:
    """The same training batches (cycled), eval items and prompt rows for every variant."""
    from peftlab import data as pdata

    rows = pdata.load_rows(dataset)
    train_rows, eval_rows = pdata.split_rows(rows, 0.1, 0)
    items = pdata.encode_rows(train_rows, tokenizer, max_length=max_length)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(items), generator=g).tolist()
    pad = tokenizer.pad_token_id
    per_epoch = len(order) // batch_size
    batches = [
        pdata.collate([items[j] for j in order[(b % per_epoch) * batch_size :][:batch_size]], pad)
        for b in range(n_batches)
    ]
    eval_rows = eval_rows[:eval_samples]
    return batches, pdata.encode_rows(eval_rows, tokenizer, max_length=max_length), eval_rows


class Variant:
    """How one implementation loads, injects, trains a step, and merges."""

    def __init__(self, pair: Pair, steps: int) -> None:
        self.pair, self.steps, self.model = pair, steps, None

    def load_base(self): ...
    def inject(self) -> None: ...
    def trainable(self) -> list[torch.nn.Parameter]: ...
    def loss(self, batch: dict) -> torch.Tensor: ...
    def after_step(self, step: int) -> None: ...
    def merge(self) -> None: ...

    def eval_model(self):
        """The module whose ``loss`` is the task loss alone (what eval reports)."""
        return self.model

    def merge_and_unload(self) -> None: ...


class PeftlabVariant(Variant):
    def load_base(self):
        from peftlab.models import load_model

        self.model, _ = load_model(
            None, dtype="float32", device="cpu", method=self.pair.method, method_config=self.pair.config
        )
        return self.model

    def inject(self) -> None:
        import peftlab

        peftlab.add_adapter(self.model, self.pair.method, self.pair.config)

    def trainable(self):
        import peftlab

        return list(peftlab.prepare_for_training(self.model).values())

    def loss(self, batch):
        from peftlab import adapters

        loss = self.model(**batch).loss
        extra = adapters.extra_loss(self.model, "default")  # e.g. AdaLoRA's orthogonality penalty
        return loss if extra is None else loss + extra

    def after_step(self, step):
        from peftlab import adapters

        adapters.on_train_step(self.model, "default", step, self.steps)  # e.g. AdaLoRA's rank reallocation

    def merge(self):
        import peftlab

        peftlab.merge_adapter(self.model)

    def merge_and_unload(self):
        import peftlab

        peftlab.unmerge_adapter(self.model)
        self.model = peftlab.merge_and_unload(self.model)


class PeftVariant(Variant):
    def load_base(self):
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        from peftlab.models import default_model_dir

        kwargs: dict[str, Any] = {}
        if self.pair.quantized_base:
            c = self.pair.config
            kwargs = {
                "quantization_config": BitsAndBytesConfig(
                    load_in_4bit=True,
                    bnb_4bit_quant_type=c["bnb_4bit_quant_type"],
                    bnb_4bit_use_double_quant=c["bnb_4bit_use_double_quant"],
                    bnb_4bit_compute_dtype=torch.float32,
                ),
                "device_map": {"": "cpu"},
            }
        self.model = AutoModelForCausalLM.from_pretrained(default_model_dir(), dtype=torch.float32, **kwargs)
        self.model.eval()
        return self.model

    def inject(self):
        from peft import get_peft_model

        self.model = get_peft_model(self.model, self.pair.peft(self.steps))

    def trainable(self):
        return [p for p in self.model.parameters() if p.requires_grad]

    def loss(self, batch):
        return self.model(**batch).loss  # peft's AdaLoRA adds its orthogonality penalty inside forward

    def after_step(self, step):
        inner = self.model.base_model
        if hasattr(inner, "update_and_allocate"):  # AdaLoRA: peft's documented per-step call
            inner.update_and_allocate(step)

    def eval_model(self):
        inner = self.model.base_model
        # peft's AdaLoraModel.forward adds the orthogonality penalty to every loss, eval included; the
        # transformers model inside it (its LoRA layers in place) gives the task loss alone, like peftlab's
        return inner.model if hasattr(inner, "update_and_allocate") else self.model

    def merge(self):
        self.model.merge_adapter()

    def merge_and_unload(self):
        self.model.unmerge_adapter()
        self.model = self.model.merge_and_unload()


def keep_4bit_trainable(model) -> None:
    """bitsandbytes repacks 4-bit weights on AVX512-BF16 CPUs after a no-grad call; that layout has no
    backward. Same fix on both sides (peftlab's QLoRA plugin does this itself)."""
    for m in model.modules():
        if type(m).__name__ in ("Linear4bit", "LinearNF4", "LinearFP4"):
            m.support_avx512bf16_for_cpu = False


@torch.no_grad()
def gen_speed(model, ids: torch.Tensor, pad: int, new_tokens: int, reps: int) -> tuple[float, list[int]]:
    """Greedy tokens/s, batch 1, exactly ``new_tokens`` new tokens (EOS ignored); best of ``reps``."""
    model.eval()
    mask = torch.ones_like(ids)
    kw = dict(do_sample=False, pad_token_id=pad, eos_token_id=None)
    model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, min_new_tokens=2, **kw)  # warm-up
    best, out = float("inf"), None
    for _ in range(reps):
        t = time.perf_counter()
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kw
        )
        best = min(best, time.perf_counter() - t)
    return new_tokens / best, out[0, ids.shape[1] :].tolist()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import peftlab
    from peftlab.generate import prompt_ids
    from peftlab.models import load_tokenizer
    from peftlab.train import eval_loss

    torch.set_num_threads(args.threads)
    pair = PAIRS[args.pair]
    handle = peftlab.get_method(pair.method)
    lr = args.lr or handle.train_defaults.get("learning_rate", 2e-3)
    steps = max(args.steps, args.warmup + args.timed)
    tok = load_tokenizer(None)
    pad = tok.pad_token_id
    batches, eval_items, eval_rows = fixed_data(
        tok, args.dataset, steps, args.batch_size, args.max_length, args.seed, args.eval_samples
    )
    prompt = torch.tensor([prompt_ids(tok, eval_rows[0]["messages"][:-1])])
    variant = (PeftlabVariant if args.impl == "peftlab" else PeftVariant)(pair, steps)
    if args.impl == "peft" and pair.peft is None:
        raise SystemExit(f"peft has no equivalent of {pair.method}")
    res: dict[str, Any] = {
        "pair": args.pair,
        "impl": args.impl,
        "method": pair.method,
        "seed": args.seed,
        "steps": steps,
        "lr": lr,
        "threads": torch.get_num_threads(),
        "loadavg_start": os.getloadavg()[0],
    }
    t = time.perf_counter()
    model = variant.load_base()
    res["load_s"] = time.perf_counter() - t
    keep_4bit_trainable(model)
    log(f"{args.impl} loaded in {res['load_s']:.0f}s")
    res["gen_base_tok_s"], base_tokens = gen_speed(model, prompt, pad, args.new_tokens, args.gen_reps)
    torch.manual_seed(args.seed)
    variant.inject()
    keep_4bit_trainable(variant.model)
    params = variant.trainable()
    res["trainable"] = sum(p.numel() for p in params)
    res["eval_loss_before"] = eval_loss(variant.eval_model(), eval_items, pad)

    log(f"{args.impl} base generate {res['gen_base_tok_s']:.1f} tok/s; eval before {res['eval_loss_before']:.3f}")
    opt = torch.optim.AdamW(params, lr=lr)
    variant.model.train()
    rss_before = max_rss_mb()
    times, losses = [], []
    for i, batch in enumerate(batches):
        t = time.perf_counter()
        loss = variant.loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        variant.after_step(i + 1)
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
        losses.append(float(loss.detach()))
        log(f"{args.impl} step {i + 1}: {times[-1]:.2f}s loss {losses[-1]:.3f}")
    rss_after = max_rss_mb()
    timed = times[args.warmup : args.warmup + args.timed]
    res.update(
        step_times=times,
        losses=losses,
        step_mean_s=statistics.mean(timed),
        step_median_s=statistics.median(timed),
        rss_before_mb=rss_before,
        rss_peak_mb=rss_after,
        rss_train_delta_mb=rss_after - rss_before,
        rss_after_train_mb=rss_now_mb(),
    )
    res["eval_loss_after"] = eval_loss(variant.eval_model(), eval_items, pad)
    res["gen_adapter_tok_s"], adapter_tokens = gen_speed(variant.model, prompt, pad, args.new_tokens, args.gen_reps)
    res["adapter_changes_output"] = adapter_tokens != base_tokens
    if handle.capabilities.mergeable:
        for stage, action in (("merged", variant.merge), ("unloaded", variant.merge_and_unload)):
            try:
                action()
                res[f"gen_{stage}_tok_s"], toks = gen_speed(variant.model, prompt, pad, args.new_tokens, args.gen_reps)
                res[f"{stage}_same_tokens"] = toks == adapter_tokens
            except Exception as e:  # recorded, not fatal: the other numbers still count
                res[f"{stage}_error"] = f"{type(e).__name__}: {e}"
    res["loadavg_end"] = os.getloadavg()[0]
    return res


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.worker")
    p.add_argument("--pair", required=True, choices=sorted(PAIRS))
    p.add_argument("--impl", required=True, choices=["peftlab", "peft"])
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--timed", type=int, default=8)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dataset", default="capitals-json")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--eval-samples", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--gen-reps", type=int, default=2)
    args = p.parse_args(argv)
    res = run(args)
    res["env"] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
    }
    Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
