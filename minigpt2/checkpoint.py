"""Load and save GPT-2 weights in the Hugging Face file layout (`model.safetensors` + `config.json`).

The HF checkpoint stores GPT-2's linear layers as `Conv1D` modules: weights are [in, out] (transposed relative to
`nn.Linear`), and the query/key/value projections are fused into one `c_attn` of width 3C. The key map below is
explicit; a `None` target means "dropped on purpose". Only safetensors files are read: a pickled `.bin` file can
run arbitrary code when loaded, so it is refused.
"""

from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .atomic import atomic_path, atomic_write_json
from .config import PRESETS, GPT2Config
from .errors import FieldError, UserError
from .model import GPT2
from .surgery import unwrap_compiled

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


class CheckpointError(UserError, ValueError):
    """A checkpoint file that cannot be used, with the file and key that are wrong."""


class UnknownModel(CheckpointError, FieldError):
    """A model name that is neither a file or folder nor a downloadable preset (the `model` setting)."""


# HF key (without the `transformer.` prefix) -> how it maps to ours. Per-layer keys use `{i}`.
#   "same": copied under the same name;  "t": transposed Conv1D weight;  "qkv"/"qkv_t": fused q/k/v, split;
#   None: a buffer or duplicate we drop on purpose.
_LAYER_KEYS: dict[str, str | None] = {
    "ln_1.weight": "same", "ln_1.bias": "same",
    "attn.c_attn.weight": "qkv_t", "attn.c_attn.bias": "qkv",
    "attn.c_proj.weight": "t", "attn.c_proj.bias": "same",
    "ln_2.weight": "same", "ln_2.bias": "same",
    "mlp.c_fc.weight": "t", "mlp.c_fc.bias": "same",
    "mlp.c_proj.weight": "t", "mlp.c_proj.bias": "same",
    "attn.bias": None,  # the causal-mask buffer of old HF versions
    "attn.masked_bias": None,  # likewise
}
_TOP_KEYS: dict[str, str | None] = {
    "wte.weight": "same", "wpe.weight": "same", "ln_f.weight": "same", "ln_f.bias": "same",
    "lm_head.weight": None,  # tied to wte.weight; checked to be equal when present
}
_OPTIONAL = re.compile(r"lm_head\.weight|h\.\d+\.attn\.(bias|masked_bias)")


def hf_shapes(config: GPT2Config) -> dict[str, tuple[int, ...]]:
    """Shape of every required HF key (no prefix) for a config."""
    C, V, P = config.n_embd, config.vocab_size, config.n_positions
    shapes: dict[str, tuple[int, ...]] = {"wte.weight": (V, C), "wpe.weight": (P, C),
                                          "ln_f.weight": (C,), "ln_f.bias": (C,)}
    per_layer = {"ln_1.weight": (C,), "ln_1.bias": (C,), "attn.c_attn.weight": (C, 3 * C),
                 "attn.c_attn.bias": (3 * C,), "attn.c_proj.weight": (C, C), "attn.c_proj.bias": (C,),
                 "ln_2.weight": (C,), "ln_2.bias": (C,), "mlp.c_fc.weight": (C, 4 * C),
                 "mlp.c_fc.bias": (4 * C,), "mlp.c_proj.weight": (4 * C, C), "mlp.c_proj.bias": (C,)}
    for i in range(config.n_layer):
        shapes.update({f"h.{i}.{k}": s for k, s in per_layer.items()})
    return shapes


def _refuse_pickle(path: Path) -> None:
    if path.suffix in {".bin", ".pt", ".pth", ".ckpt", ".pkl"}:
        raise CheckpointError(
            f"{path}: refusing to load a pickled checkpoint (loading pickle can execute arbitrary code). "
            "Use the model's `model.safetensors` instead, or convert it once in a trusted environment with "
            "`transformers`: GPT2LMHeadModel.from_pretrained(dir).save_pretrained(out_dir, safe_serialization=True)."
        )


# Dtypes checked for NaN/inf on load (torch has no isfinite for the FP8 storage of packed checkpoints).
_CHECKED_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@contextmanager
def _opened(path: Path) -> Iterator[Any]:
    """`safe_open` of a safetensors file; a pickle, a missing file or anything unreadable is one CheckpointError."""
    _refuse_pickle(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with safe_open(str(path), framework="pt") as f:
            yield f
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a valid safetensors file ({path.stat().st_size} bytes; truncated or "
                              f"another format?): {e}") from e


def check_safetensors(path: str | os.PathLike) -> None:
    """Raise `read_safetensors`'s error if `path` is not a safetensors file whose header covers the whole file
    (missing, empty, truncated, pickled); nothing is loaded: the check a sweep makes once before its runs."""
    with _opened(Path(path)) as f:
        f.keys()


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the metadata of a safetensors file; a clear error for anything else."""
    path = Path(path)
    with _opened(path) as f:
        metadata = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for key, t in tensors.items():  # a diverged run's NaN weights must not be trained on or scored silently
        if t.dtype in _CHECKED_FLOATS and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{path}: tensor {key!r} holds NaN or infinite values; the run that wrote it "
                                  "diverged (retrain it with a lower --lr)")
    return tensors, metadata


def _strip_prefix(key: str) -> str:
    return key[len("transformer."):] if key.startswith("transformer.") else key


def hf_to_minigpt2(hf: dict[str, torch.Tensor], config: GPT2Config, source: str = "checkpoint"
                   ) -> dict[str, torch.Tensor]:
    """Convert an HF GPT-2 state dict (with or without `transformer.`) into minigpt2's names and layout."""
    tensors = {_strip_prefix(k): v for k, v in hf.items()}
    expected = hf_shapes(config)

    unexpected = [k for k in tensors if k not in expected and not _OPTIONAL.fullmatch(k)]
    missing = sorted(set(expected) - set(tensors))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing key(s) {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected key(s) {sorted(unexpected)[:8]}{' ...' if len(unexpected) > 8 else ''}")
        raise CheckpointError(f"{source}: not a GPT-2 checkpoint for n_layer={config.n_layer}, "
                              f"n_embd={config.n_embd}: " + "; ".join(parts))
    for key, shape in expected.items():
        t = tensors[key]
        if tuple(t.shape) != shape:
            raise CheckpointError(f"{source}: key {key!r} has shape {tuple(t.shape)}, expected {shape}")
        if not t.dtype.is_floating_point:
            raise CheckpointError(f"{source}: key {key!r} has dtype {t.dtype}, expected a floating-point dtype")
    if "lm_head.weight" in tensors and not torch.equal(tensors["lm_head.weight"], tensors["wte.weight"]):
        raise CheckpointError(f"{source}: 'lm_head.weight' differs from 'wte.weight'; GPT-2 ties them and "
                              "minigpt2 supports only the tied head")

    out: dict[str, torch.Tensor] = {k: tensors[k] for k, rule in _TOP_KEYS.items() if rule == "same"}
    for i in range(config.n_layer):
        for name, rule in _LAYER_KEYS.items():
            if rule is None:
                continue
            t = tensors[f"h.{i}.{name}"]
            if rule == "same":
                out[f"h.{i}.{name}"] = t
            elif rule == "t":
                out[f"h.{i}.{name}"] = t.t().contiguous()
            else:  # fused q/k/v: [C, 3C] (or [3C]) -> three pieces of C
                if rule == "qkv_t":
                    t = t.t()
                suffix = name.rsplit(".", 1)[1]
                for proj, piece in zip(("query", "key", "value"), t.chunk(3, dim=0)):
                    out[f"h.{i}.attn.{proj}.{suffix}"] = piece.contiguous()
    return out


def minigpt2_to_hf(state: dict[str, torch.Tensor], config: GPT2Config) -> dict[str, torch.Tensor]:
    """The inverse of `hf_to_minigpt2`: HF names (with the `transformer.` prefix), Conv1D layout, fused c_attn."""
    out = {f"transformer.{k}": state[k] for k, rule in _TOP_KEYS.items() if rule == "same"}
    for i in range(config.n_layer):
        p = f"h.{i}."
        for name, rule in _LAYER_KEYS.items():
            if rule == "same":
                out[f"transformer.{p}{name}"] = state[p + name]
            elif rule == "t":
                out[f"transformer.{p}{name}"] = state[p + name].t()
            elif rule in ("qkv", "qkv_t"):
                suffix = name.rsplit(".", 1)[1]
                fused = torch.cat([state[f"{p}attn.{proj}.{suffix}"] for proj in ("query", "key", "value")])
                out[f"transformer.{p}{name}"] = fused.t() if rule == "qkv_t" else fused
    return {k: v.detach().contiguous().cpu() for k, v in out.items()}


def _find_files(path: Path) -> tuple[Path, Path | None]:
    """(weights file, config file or None) for a file or a folder."""
    if path.is_dir():
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            pickled = [p.name for p in path.iterdir() if p.suffix in {".bin", ".pt", ".pth"}]
            if pickled:
                _refuse_pickle(path / pickled[0])
            raise CheckpointError(f"{path}: folder holds no {WEIGHTS_NAME}")
    else:
        weights = path
        _refuse_pickle(weights)
        if not weights.is_file():
            raise CheckpointError(f"{weights}: no such checkpoint file")
    config = weights.parent / CONFIG_NAME
    return weights, config if config.is_file() else None


def read_hf_config(path: str | os.PathLike) -> GPT2Config:
    """A `GPT2Config` from an HF `config.json`, with a clear error naming the file."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read a JSON config: {e}") from e
    if not isinstance(d, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    try:
        return GPT2Config.from_hf_dict(d, source=str(path))
    except (ValueError, TypeError) as e:
        raise CheckpointError(str(e)) from e


def infer_config(hf: dict[str, torch.Tensor], source: str = "checkpoint") -> GPT2Config:
    """Sizes from tensor shapes alone, for a bare weights file; GPT-2 always uses 64-wide heads."""
    tensors = {_strip_prefix(k): v for k, v in hf.items()}
    if "wte.weight" not in tensors or "wpe.weight" not in tensors:
        raise CheckpointError(f"{source}: missing key 'wte.weight' or 'wpe.weight'; not a GPT-2 checkpoint")
    V, C = tensors["wte.weight"].shape
    P = tensors["wpe.weight"].shape[0]
    layers = {int(m.group(1)) for k in tensors if (m := re.match(r"h\.(\d+)\.", k))}
    n_head = max(1, C // 64)
    for name, preset in PRESETS.items():
        if preset["n_embd"] == C and preset["n_layer"] == len(layers):
            n_head = preset["n_head"]
    return GPT2Config(vocab_size=V, n_positions=P, n_embd=C, n_layer=len(layers), n_head=n_head)


def model_from_state(config: GPT2Config, state: dict[str, torch.Tensor], source: str) -> GPT2:
    """A `GPT2` of `config` holding `state`'s very tensors (built on the meta device, then assigned: no copy, no
    random init); a `CheckpointError` naming `source` when they do not fit it."""
    with torch.device("meta"):
        model = GPT2(config)
    # one line naming the keys (torch's own error spans lines and lists every key of every layer)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    parts = [f"{what} key(s) {keys[:8]}{' ...' if len(keys) > 8 else ''}"
             for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
    parts += [f"key {k!r} has shape {tuple(state[k].shape)}, expected {shape}"
              for k, shape in expected.items() if k in state and tuple(state[k].shape) != shape][:1]
    if parts:
        raise CheckpointError(f"{source}: tensors do not fit a GPT2 of this config (n_layer={config.n_layer}, "
                              f"n_embd={config.n_embd}): " + "; ".join(parts))
    model.load_state_dict(state, strict=True, assign=True)  # names and shapes are checked above
    return model


def load_model(path: str | os.PathLike, config: GPT2Config | None = None, dtype: torch.dtype | None = None,
               device: str | torch.device | None = None) -> GPT2:
    """A `GPT2` from an HF-layout checkpoint: a `model.safetensors` file or a folder holding one.

    The config comes from, in order: the argument, a `config.json` beside the weights, the tensor shapes.
    """
    weights, config_file = _find_files(Path(path))
    hf, _ = read_safetensors(weights)
    if config is None:
        config = read_hf_config(config_file) if config_file else infer_config(hf, str(weights))
    model = model_from_state(config, hf_to_minigpt2(hf, config, source=str(weights)), str(weights))
    model = model.to(dtype=dtype or torch.float32)
    return model.to(device) if device is not None else model


def save_model(model: GPT2, folder: str | os.PathLike, extra_config: dict[str, Any] | None = None,
               dtype: torch.dtype | None = None) -> Path:
    """Write `model.safetensors` + `config.json` in the HF layout; `transformers` can load the folder.

    `extra_config` (run settings: LoRA, quantization, task) is stored under the key "minigpt2" of config.json.
    The write is atomic: a crash leaves the previous checkpoint in place, never a half-written one.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = unwrap_compiled(model)  # save the real module's names, not the compile wrapper's
    state = {k: v for k, v in model.state_dict().items()}
    hf = minigpt2_to_hf(state, model.config)
    if dtype is not None:
        hf = {k: v.to(dtype) for k, v in hf.items()}
    with atomic_path(folder / WEIGHTS_NAME) as tmp:
        save_file(hf, str(tmp), metadata={"format": "pt"})
    cfg = model.config.to_hf_dict()
    if extra_config:
        cfg["minigpt2"] = extra_config
    atomic_write_json(folder / CONFIG_NAME, cfg)
    return folder


def resolve_model(name_or_path: str | os.PathLike, cache_dir: str | os.PathLike = "checkpoints",
                  offline: bool = False) -> Path:
    """The local folder or file of `--model`: a path as given, or a preset name (e.g. "gpt2") in the cache.

    A preset missing from `cache_dir/<name>/` is downloaded from the Hugging Face hub (unless `offline`).
    """
    path = Path(name_or_path)
    if path.exists():
        return path
    name = str(name_or_path)
    if name not in PRESETS or name == "tiny":
        raise UnknownModel("model", repr(name), "an existing file or folder, or a downloadable preset (one of "
                           f"{sorted(set(PRESETS) - {'tiny'})})")
    local = Path(cache_dir) / name
    if (local / WEIGHTS_NAME).is_file():
        return local
    from .download import download_weights  # network only when really needed

    return download_weights(name, local, offline=offline)
