"""Where the application switches the speed pieces (`minigpt2.fast`) in: once before training, once for the model a
generative task predicts with. With `--plain` (`HardwareSettings.plain`) neither happens, and every command runs
the library's plain modules only; `--compile` (the compiled blocks, `minigpt2.fast.compiled`) is its own switch and
holds on either path, as it changes no module."""

from __future__ import annotations

import copy
from typing import Callable, ContextManager

import torch

from minigpt2 import fast
from minigpt2.fast.compiled import CompiledBlocks
from tasks.base import GenerativeTask, PredictSettings, Task, TaskModel


def for_training(module: TaskModel, device: torch.device, plain: bool, compile: bool = False
                 ) -> Callable[[], ContextManager] | None:
    """`minigpt2.fast.for_training` unless `plain`: in place, no parameter or state-dict key changes. Returns the
    context the training steps run in (`minigpt2.train.train`'s `step_context`): with `compile`, the blocks
    compiled by inductor (`CompiledBlocks`, built after the swaps above so that it compiles the blocks that
    train); else None."""
    if not plain:
        fast.for_training(module, device)
    return CompiledBlocks(module).active if compile else None


def predicting(module: TaskModel, task: Task, device: torch.device, how: PredictSettings, plain: bool
               ) -> TaskModel:
    """The module a task predicts with under `how`: for a generative task on the fast path, a shallow copy of
    `module` whose body is `minigpt2.fast.for_inference`'s copy (prepacked on CPU for `how.batch_size` prompts
    decoded together, in bf16 when the run autocasts to bf16 and the CPU has native bf16); `module` itself
    otherwise. `module` is never changed."""
    if plain or not isinstance(task, GenerativeTask):
        return module
    view = copy.copy(module)
    view._modules = dict(module._modules)  # its own module table: the body below replaces only the copy's
    view.gpt = fast.for_inference(module.gpt, device, how.autocast_dtype, batch=how.batch_size)
    return view
