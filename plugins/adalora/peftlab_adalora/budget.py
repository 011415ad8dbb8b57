"""AdaLoRA's rank allocator (paper §3.2–3.3; peft's ``RankAllocator``, same arithmetic).

Each step, every entry w of P, Λ, Q gets an importance I = |w · ∂L/∂w|, smoothed as
Ī ← β₁ Ī + (1−β₁) I (sensitivity) and Ū ← β₂ Ū + (1−β₂) |I − Ī| (uncertainty); the score of an entry
is s = Ī · Ū. Triplet i of a layer scores S_i = s(λᵢ) + mean_j s(Q_ij) + mean_j s(P_ji). The budget
b(t) falls on a cubic schedule from init_r × layers to target_r × layers between ``tinit`` and
``total_step − tfinal``; every ``deltaT`` steps the triplets with the lowest scores across the whole
model are pruned (λᵢ = 0) so that at most b(t) stay.
"""

from __future__ import annotations

import torch

from peftlab import MethodError

from .config import AdaLoraConfig
from .layer import AdaLoraLayer

PARTS = ("lora_A", "lora_B", "lora_E")  # Q, P, Λ


def part_param(layer: AdaLoraLayer, part: str, name: str) -> torch.nn.Parameter:
    return layer.lora_E[name] if part == "lora_E" else getattr(layer, part)[name].weight


def pattern_key(path: str) -> str:
    """The ``rank_pattern`` key of a layer, as peft writes it (adapter name dropped)."""
    return f"{path}.lora_E"


class RankAllocator:
    """Importance scores and the rank budget of one AdaLoRA adapter (lives on the model while it trains)."""

    def __init__(self, layers: dict[str, AdaLoraLayer], name: str, config: AdaLoraConfig) -> None:
        self.layers, self.name, self.config = layers, name, config
        self.init_bgt = sum(layer.rank(name) for layer in layers.values())
        self.target_bgt = config.target_r * len(layers)
        self.reset_ipt()

    def reset_ipt(self) -> None:
        self.exp_avg_ipt: dict[str, torch.Tensor] = {}  # Ī
        self.exp_avg_unc: dict[str, torch.Tensor] = {}  # Ū

    def budget_schedule(self, step: int, total_step: int) -> tuple[int, bool]:
        """(budget b(t), whether to reallocate at this step)."""
        tinit, tfinal = self.config.tinit, self.config.tfinal
        if step <= tinit:  # warm-up: every triplet trains
            return self.init_bgt, False
        if step > total_step - tfinal:  # final fine-tuning on the last allocation
            return self.target_bgt, True
        mul_coeff = 1 - (step - tinit) / (total_step - tfinal - tinit)  # cubic decay, as in the paper
        budget = int((self.init_bgt - self.target_bgt) * (mul_coeff**3) + self.target_bgt)
        return budget, step % self.config.deltaT == 0

    @torch.no_grad()
    def update_ipt(self) -> None:
        """Fold this step's |w · ∂L/∂w| into the sensitivity and uncertainty EMAs."""
        beta1, beta2 = self.config.beta1, self.config.beta2
        for path, layer in self.layers.items():
            for part in PARTS:
                p = part_param(layer, part, self.name)
                if p.grad is None:
                    raise MethodError(
                        f"AdaLoRA: {path}.{part}.{self.name} has no gradient; on_train_step must run after "
                        f"backward() and before zero_grad() (the trainer does this)"
                    )
                key = f"{path}.{part}"
                ipt = (p * p.grad).abs()
                if key not in self.exp_avg_ipt:
                    self.exp_avg_ipt[key] = torch.zeros_like(p)
                    self.exp_avg_unc[key] = torch.zeros_like(p)
                avg = self.exp_avg_ipt[key] = beta1 * self.exp_avg_ipt[key] + (1 - beta1) * ipt  # Ī
                self.exp_avg_unc[key] = beta2 * self.exp_avg_unc[key] + (1 - beta2) * (ipt - avg).abs()  # Ū

    def _score(self, key: str) -> torch.Tensor:
        return self.exp_avg_ipt[key] * self.exp_avg_unc[key]

    def triplet_scores(self) -> dict[str, torch.Tensor]:
        """S_i per layer: s(λᵢ) + mean over Qᵢ's entries + mean over Pᵢ's entries."""
        out = {}
        for path in self.layers:
            s_Q = self._score(f"{path}.lora_A").mean(dim=1)  # [r]: row i of Q
            s_P = self._score(f"{path}.lora_B").mean(dim=0)  # [r]: column i of P
            out[path] = self._score(f"{path}.lora_E").view(-1) + (s_Q + s_P)
        return out

    @torch.no_grad()
    def mask_to_budget(self, budget: int) -> dict[str, list[bool]]:
        """Zero λ of the lowest-scoring triplets so that ``budget`` remain; return the rank pattern."""
        if not self.exp_avg_ipt:
            self.update_ipt()  # a schedule so short that no step scored yet
        scores = self.triplet_scores()
        k = self.init_bgt - budget
        if k <= 0:  # nothing to prune (init_r == target_r)
            return {pattern_key(p): [True] * self.layers[p].rank(self.name) for p in self.layers}
        threshold = torch.kthvalue(torch.cat([s.float().cpu() for s in scores.values()]), k=k)[0].item()
        pattern = {}
        for path, layer in self.layers.items():
            keep = scores[path] > threshold  # ties at the threshold go too, as in peft
            layer.lora_E[self.name].masked_fill_(~keep.view(-1, 1), 0.0)
            pattern[pattern_key(path)] = keep.view(-1).tolist()
        return pattern

    @torch.no_grad()
    def mask_using_rank_pattern(self, pattern: dict[str, list[bool]]) -> None:
        """Re-apply a fixed allocation (after the optimizer moved the pruned λ again)."""
        for path, layer in self.layers.items():
            keep = pattern.get(pattern_key(path))
            E = layer.lora_E[self.name]
            if keep is not None and len(keep) == E.shape[0]:
                E.masked_fill_(~torch.tensor(keep, device=E.device).view(-1, 1), 0.0)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The EMAs, for a checkpoint that resumes training."""
        out = {f"{k}.exp_avg_ipt": v for k, v in self.exp_avg_ipt.items()}
        out.update({f"{k}.exp_avg_unc": v for k, v in self.exp_avg_unc.items()})
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        for key, value in tensors.items():
            base, _, kind = key.rpartition(".")
            target = self.exp_avg_ipt if kind == "exp_avg_ipt" else self.exp_avg_unc
            target[base] = value.clone()
