"""Side-by-side benchmarks of peftlab's methods against ``peft``'s implementation of the same method.

Every variant runs in its own subprocess (so peak memory is its own), alternating peftlab / peft,
and the report gives ratios (peftlab / peft) because the absolute timings on a shared machine are noisy.
Run from the repository root: ``python -m bench lora``, ``python -m bench all``, ``python -m bench compare``.
"""
