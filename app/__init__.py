"""The application: the commands that put the library, the tasks, quantization and distillation together."""
