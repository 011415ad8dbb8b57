"""Bytes the base model's weights take in memory: SmolLM2 in float32 (LoRA's base) vs 4-bit NF4 (QLoRA's).

``python -m bench.weights_memory`` — counts parameter and buffer storage (a 4-bit weight counts its packed
bytes plus its quantization state), so the figure is exact and independent of the machine's load.
"""

from __future__ import annotations

import json

import torch


def weight_bytes(model: torch.nn.Module) -> int:
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() in seen:
            continue  # tied weights (SmolLM2's embeddings and LM head) count once
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
        state = getattr(t, "quant_state", None)
        if state is not None:  # absmax (and its own quantization with double quant), code book
            for part in (state.absmax, state.code, getattr(getattr(state, "state2", None), "absmax", None)):
                if isinstance(part, torch.Tensor):
                    total += part.numel() * part.element_size()
    return total


def main() -> None:
    from peftlab.models import load_model

    rows = {}
    for label, method in (("float32 (lora)", "lora"), ("nf4 + double quant (qlora)", "qlora")):
        model, _ = load_model(None, dtype="float32", device="cpu", method=method)
        rows[label] = weight_bytes(model) / 2**20
    rows["ratio qlora / lora"] = rows["nf4 + double quant (qlora)"] / rows["float32 (lora)"]
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
