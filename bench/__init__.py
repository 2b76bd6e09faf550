"""Side-by-side benchmarks: minigpt2 against transformers / peft on the same weights, in one process run."""
