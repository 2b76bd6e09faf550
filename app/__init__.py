"""The application: the commands `finetune`, `evaluate` and `generate`, typed run settings, run folders, the
precision flags and the mixing of synthetic sonnets into the sonnet task. The one place that knows tasks, LoRA,
quantization and distillation together; the library (`minigpt2`) and `tasks`, `quant`, `distill` never import it."""
