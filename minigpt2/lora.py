"""LoRA: low-rank adapters on frozen linear layers (Hu et al., 2021), written out by hand.

          ┌────────────────────┐
    x ─┬─►│ W  (frozen, out×in)│─────────────────────────┐
       │  └────────────────────┘                         ▼
       │  ┌─────────┐   ┌──────────┐                    (+)──► y = W x + b + (alpha / r) · B A x
       └─►│ A (r×in)│──►│ B (out×r)│──► · alpha/r ──────┘
 dropout  └─────────┘   └──────────┘
 (adapter
  path only)   A: Kaiming-uniform     B: zeros   ⇒ a fresh adapter adds B A x = 0: the model is unchanged.

Only A and B train: r·(in + out) numbers per layer instead of in·out. The scale is alpha/r, or alpha/sqrt(r) with
rank-stabilised LoRA (rsLoRA, Kalajdzievic 2023), so the learning rate need not be retuned for every rank.

`LoRALinear` wraps whatever sits at a projection: an `nn.Linear`, or any module mapping (..., in) -> (..., out)
that exposes `in_features`/`out_features` — e.g. a fake-quant linear. So "QLoRA-style" training is: apply
fake-quant first, then LoRA; the frozen base is quantized and the adapter stays in high precision. Merging B A into the weights is exact only for a plain `nn.Linear`; a fake-quant
base would quantize W + B A again, so `merge()` refuses it rather than silently change the model.

Per-projection adapters: minigpt2 keeps query, key and value as three linears, so each gets its own A and B (the
study's parameter counts assume this). Hugging Face fuses them in one `c_attn`; the exact equivalent there is one
rank-3r adapter with A = [A_q; A_k; A_v] and B = blockdiag(B_q, B_k, B_v) (see tests/minigpt2/test_lora_peft.py).
"""

from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

from .atomic import atomic_path
from .checkpoint import CheckpointError, read_safetensors
from .errors import FieldError, UserError, require
from .surgery import replace_module, unwrap_compiled, without_wrappers

# Module-name suffixes of each target preset (names as in `minigpt2.model`).
TARGET_PRESETS: dict[str, tuple[str, ...]] = {
    "attn": ("attn.query", "attn.key", "attn.value", "attn.c_proj"),
    "attn+mlp": ("attn.query", "attn.key", "attn.value", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"),
}
METADATA_KEY = "minigpt2.lora"  # safetensors metadata entry holding the LoRA settings as JSON
ADAPTER_FORMAT = 1


class LoRALinear(nn.Module):
    """`base(x) + scaling · B A dropout(x)`, with `base` frozen by `apply_lora` and only A, B trainable.

    base: any module mapping (..., in_features) -> (..., out_features) with `in_features`/`out_features`.
    r: rank; alpha: scale numerator (scaling = alpha/r, or alpha/sqrt(r) when `rslora`); dropout: applied to the
    adapter's input only, never to the base path.
    """

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0, rslora: bool = False) -> None:
        super().__init__()
        in_features, out_features = getattr(base, "in_features", None), getattr(base, "out_features", None)
        if not isinstance(in_features, int) or not isinstance(out_features, int):
            raise TypeError(f"LoRA needs a linear-like base with integer `in_features`/`out_features`; "
                            f"{type(base).__name__} has in_features={in_features!r}, out_features={out_features!r}")
        _check_settings(r, alpha, dropout, rslora)
        self.base = base
        self.in_features, self.out_features = in_features, out_features
        self.r, self.alpha, self.rslora = int(r), float(alpha), bool(rslora)
        self.scaling = self.alpha / (math.sqrt(self.r) if self.rslora else self.r)
        # Adapters live where the base lives (meta device included), in its float dtype (not a packed int one).
        tensors = [*base.parameters(), *base.buffers()]
        device = tensors[0].device if tensors else None
        dtype = next((t.dtype for t in tensors if t.is_floating_point()), None)
        self.lora_A = nn.Parameter(torch.empty(self.r, in_features, device=device, dtype=dtype))  # (r, in)
        self.lora_B = nn.Parameter(torch.empty(out_features, self.r, device=device, dtype=dtype))  # (out, r)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The standard init (as in the LoRA paper's code and `peft`): A Kaiming-uniform, B zero."""
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:
            return y
        # x A^T first: (N, in) -> (N, r) is cheap, and B A (out × in) is never formed.
        return y + F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """scaling · B A, the (out, in) change the adapter makes to the base weight."""
        return (self.lora_B @ self.lora_A) * self.scaling

    @property
    def mergeable(self) -> bool:
        # Exact only when the base computes x W^T + b with its own weight: a subclass or wrapper (fake-quant)
        # may transform W in forward, so W + B A would not reproduce the adapter model.
        return isinstance(self.base, nn.Linear) and type(self.base).forward is nn.Linear.forward

    def merge(self) -> None:
        """Fold scaling · B A into the base weight (for inference); calling it again does nothing."""
        if self.merged:
            return
        if not self.mergeable:
            raise TypeError(
                f"cannot merge LoRA into a {type(self.base).__name__} base: merging is exact only for a plain "
                "nn.Linear (output x @ W.T + b). A fake-quant base would quantize W + B A again and change the "
                "model; keep the adapter unmerged, or merge into the full-precision weight and quantize that.")
        with torch.no_grad():
            self.base.weight += self.delta_weight().to(self.base.weight.dtype)
        self.merged = True

    def unmerge(self) -> None:
        """Take scaling · B A back out of the base weight; does nothing if not merged."""
        if not self.merged:
            return
        with torch.no_grad():
            self.base.weight -= self.delta_weight().to(self.base.weight.dtype)
        self.merged = False

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
                f"alpha={self.alpha:g}, scaling={self.scaling:g}, rslora={self.rslora}, merged={self.merged}")


class LoraSettingsError(UserError, ValueError):
    """LoRA targets that select no linear layer of the model."""


def _check_settings(r: int, alpha: float, dropout: float, rslora: bool) -> None:
    """A `FieldError` naming the first of rank, alpha, dropout, rslora that cannot work."""
    require(not isinstance(r, bool) and isinstance(r, int) and r >= 1, "rank", repr(r), "an integer >= 1")
    # alpha = inf passed `alpha > 0` and made every output NaN (a fresh B is 0, and 0 * inf is NaN)
    require(isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and math.isfinite(alpha) and alpha > 0,
            "alpha", repr(alpha), "a finite number > 0")
    require(isinstance(dropout, (int, float)) and 0.0 <= dropout < 1.0, "dropout", repr(dropout),
            "a fraction in [0, 1)")
    # a file's "false" is a string, and bool("false") is True: a scaling the run did not train with
    require(isinstance(rslora, bool), "rslora", repr(rslora), "true or false")


@dataclass(frozen=True)
class LoRAConfig:
    """The settings `apply_lora` used; stored with the model and in every adapter file."""

    rank: int = field(default=8, metadata={"help": "LoRA rank r"})
    alpha: float = field(default=16.0, metadata={"help": "LoRA alpha; the adapter output is scaled by alpha/r"})
    targets: str | tuple[str, ...] = field(default="attn", metadata={"help": (
        "attn (query, key, value, output projection), attn+mlp (also mlp.c_fc, mlp.c_proj), or comma-separated "
        "module names, e.g. attn.query,attn.value")})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapters' input"})
    rslora: bool = False
    trainable: tuple[str, ...] = ()  # extra modules trained in full (a task head), saved with the adapter

    def __post_init__(self) -> None:
        _check_settings(self.rank, self.alpha, self.dropout, self.rslora)
        target_suffixes(self.targets)
        # A list of names is kept as a tuple: a config equals the one read back from its file, and is hashable.
        if not isinstance(self.targets, str):
            object.__setattr__(self, "targets", tuple(self.targets))
        # one name is not the list of its letters: tuple("head") asked to train modules 'h', 'e', 'a', 'd'
        require(not isinstance(self.trainable, str), "trainable", repr(self.trainable), "a list of module names")
        object.__setattr__(self, "trainable", tuple(self.trainable))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["targets"] = self.targets if isinstance(self.targets, str) else list(self.targets)
        d["trainable"] = list(self.trainable)
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "adapter") -> "LoRAConfig":
        if not isinstance(d, dict):
            raise CheckpointError(f"{source}: LoRA settings must be a JSON object, got {type(d).__name__}")
        missing = [k for k in ("rank", "alpha", "targets") if k not in d]
        unknown = sorted(set(d) - {f.name for f in cls.__dataclass_fields__.values()})
        if missing or unknown:
            raise CheckpointError(f"{source}: LoRA settings have missing key(s) {missing} / unknown key(s) "
                                  f"{unknown}; expected rank, alpha, targets, dropout, rslora, trainable")
        targets = d["targets"]
        try:
            return cls(rank=d["rank"], alpha=d["alpha"],
                       targets=targets if isinstance(targets, str) else tuple(targets),
                       dropout=d.get("dropout", 0.0), rslora=d.get("rslora", False),
                       trainable=d.get("trainable", ()))
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{source}: invalid LoRA settings {d}: {e}") from e


def target_suffixes(targets: str | Sequence[str]) -> tuple[str, ...]:
    """Module-name suffixes for a preset ("attn", "attn+mlp"), a comma-separated string, or a list of names."""
    if isinstance(targets, str):
        if targets in TARGET_PRESETS:
            return TARGET_PRESETS[targets]
        targets = [t.strip() for t in targets.split(",")]
    names = tuple(targets)
    if not names or any(not isinstance(t, str) or not t or t in TARGET_PRESETS for t in names):
        raise FieldError("targets", repr(targets), f"a preset {sorted(TARGET_PRESETS)} or a non-empty list of module "
                         "names (e.g. ['attn.query', 'attn.value'])")
    return names


def _matches(name: str, suffix: str) -> bool:
    return name == suffix or name.endswith("." + suffix)


def find_targets(model: nn.Module, targets: str | Sequence[str]) -> list[str]:
    """Full names of the modules `targets` selects, in model order; a target that matches nothing is an error."""
    suffixes = target_suffixes(targets)
    names = [n for n, _ in model.named_modules() if n]
    for s in suffixes:
        if not any(_matches(n, s) for n in names):
            raise LoraSettingsError(
                f"unknown LoRA target {s!r}: no module of {type(model).__name__} is named so. Use a preset "
                f"{sorted(TARGET_PRESETS)} or module names such as 'attn.query', 'attn.value', 'mlp.c_fc'")
    # The outermost match only: with a fake-quant wrapper at `attn.query`, LoRA wraps the wrapper, not `.base`.
    chosen: list[str] = []
    modules = dict(model.named_modules())
    for n in names:
        if any(_matches(n, s) for s in suffixes) and not any(n.startswith(c + ".") for c in chosen):
            m = modules[n]
            if not all(isinstance(getattr(m, a, None), int) for a in ("in_features", "out_features")):
                target = next(s for s in suffixes if _matches(n, s))
                raise LoraSettingsError(f"LoRA target {target!r} selects {n!r} ({type(m).__name__}), which is not a "
                                 "linear layer (no in_features/out_features); name its projections instead, "
                                 "e.g. 'mlp.c_fc'")
            chosen.append(n)
    return chosen


@dataclass
class LoRAReport:
    """What `apply_lora` did: how many parameters train, out of how many."""

    trainable: int
    total: int
    lora: int
    modules: list[str] = field(default_factory=list)

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return (f"LoRA on {len(self.modules)} modules: {self.trainable:,} trainable of {self.total:,} parameters "
                f"({self.percent:.2f}%; adapters {self.lora:,})")


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def apply_lora(model: nn.Module, config: LoRAConfig) -> LoRAReport:
    """Wrap the projections `config.targets` selects in `LoRALinear` and freeze everything but the adapters.

    config.targets: "attn" (query, key, value, output projection), "attn+mlp" (also mlp.c_fc and mlp.c_proj), or
    module-name suffixes. config.trainable: names of extra modules of `model` that keep training in full (a task
    head). The settings are kept as `model.lora_config` for `save_adapter`.
    """
    if lora_modules(model):
        raise ValueError(f"{type(model).__name__} already has LoRA adapters; apply_lora works on a plain model")
    names = find_targets(model, config.targets)
    for name in names:
        replace_module(model, name, LoRALinear(model.get_submodule(name), config.rank, config.alpha,
                                               config.dropout, config.rslora))
    mark_only_lora_trainable(model, config.trainable)
    model.lora_config = config
    return lora_report(model)


def lora_report(model: nn.Module) -> LoRAReport:
    """Trainable, total and adapter parameter counts (a tied weight counts once)."""
    params = list(model.parameters())
    lora = sum(m.lora_A.numel() + m.lora_B.numel() for m in lora_modules(model).values())
    return LoRAReport(trainable=sum(p.numel() for p in params if p.requires_grad),
                      total=sum(p.numel() for p in params), lora=lora, modules=list(lora_modules(model)))


def _is_lora_param(name: str) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return leaf in ("lora_A", "lora_B")


def _under(name: str, module_names: Iterable[str]) -> bool:
    return any(name == m or name.startswith(m + ".") for m in module_names)


def mark_only_lora_trainable(model: nn.Module, trainable: Iterable[str] = ()) -> int:
    """Freeze every parameter except the LoRA A/B matrices and those of the modules named in `trainable`.

    Returns the number of trainable parameters. A name in `trainable` that is not a module of `model` is an error.
    """
    trainable = tuple(trainable)
    modules = dict(model.named_modules())
    for t in trainable:
        if t not in modules:
            raise ValueError(f"trainable module {t!r} is not a module of {type(model).__name__}")
    count = 0
    for name, p in model.named_parameters():
        p.requires_grad_(_is_lora_param(name) or _under(name, trainable))
        count += p.numel() if p.requires_grad else 0
    return count


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors (every lora_A/lora_B), plus the parameters of the `trainable` modules (task head)."""
    model = unwrap_compiled(model)
    config: LoRAConfig | None = getattr(model, "lora_config", None)
    extra = config.trainable if config else ()
    return {n: p for n, p in model.named_parameters() if _is_lora_param(n) or _under(n, extra)}


def save_adapter(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write the adapter (and trained head) as safetensors, with the LoRA settings as JSON metadata.

    The file is small (only the trained tensors) and is applied to a freshly loaded base with `load_adapter`.
    """
    model = unwrap_compiled(model)
    config: LoRAConfig | None = getattr(model, "lora_config", None)
    if config is None or not lora_modules(model):
        raise ValueError(f"{type(model).__name__} has no LoRA adapters to save; call apply_lora first")
    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in lora_state_dict(model).items()}
    meta = {"format": "pt", METADATA_KEY: json.dumps({"format_version": ADAPTER_FORMAT, **config.to_dict()})}
    with atomic_path(path) as tmp:  # a crash never leaves a half-written adapter
        save_file(tensors, str(tmp), metadata=meta)
    return path


def read_adapter_config(path: str | os.PathLike, metadata: dict[str, str]) -> LoRAConfig:
    """The LoRA settings stored in an adapter file's metadata, with errors naming the file."""
    raw = metadata.get(METADATA_KEY)
    if raw is None:
        raise CheckpointError(f"{path}: no LoRA settings in the safetensors metadata (key {METADATA_KEY!r}); "
                              "not an adapter written by minigpt2.lora.save_adapter")
    try:
        d = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: metadata key {METADATA_KEY!r} is not valid JSON: {e}") from e
    if isinstance(d, dict):
        version = d.pop("format_version", None)
        if version != ADAPTER_FORMAT:
            raise CheckpointError(f"{path}: adapter format_version {version!r}, expected {ADAPTER_FORMAT}")
    return LoRAConfig.from_dict(d, source=f"{path}: metadata key {METADATA_KEY!r}")


def load_adapter(model: nn.Module, path: str | os.PathLike) -> LoRAReport:
    """Apply an adapter file to `model`: adds the adapters (with the file's settings) if the model has none yet,
    then loads every tensor. Keys, shapes and settings are checked; errors name the file and the key."""
    path = Path(path)
    tensors, metadata = read_safetensors(path)
    config = read_adapter_config(path, metadata)
    model = unwrap_compiled(model)
    current: LoRAConfig | None = getattr(model, "lora_config", None)
    if current is None:
        try:
            apply_lora(model, config)
        except ValueError as e:
            raise CheckpointError(f"{path}: adapter settings do not fit this model: {e}") from e
    else:
        mine, theirs = current.to_dict(), config.to_dict()
        diff = {k: (theirs[k], mine[k]) for k in theirs if k != "dropout" and theirs[k] != mine[k]}
        if diff:
            raise CheckpointError(f"{path}: adapter settings differ from the model's LoRA (file, model): {diff}")
    if any(m.merged for m in lora_modules(model).values()):
        raise ValueError(f"{path}: cannot load an adapter into merged LoRA layers; call unmerge_lora(model) first")
    expected = lora_state_dict(model)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path}: adapter does not match the model: missing key(s) {missing[:6]}"
                              f"{' ...' if len(missing) > 6 else ''}, unexpected key(s) {unexpected[:6]}"
                              f"{' ...' if len(unexpected) > 6 else ''}")
    for key, param in expected.items():
        t = tensors[key]
        if tuple(t.shape) != tuple(param.shape):
            raise CheckpointError(f"{path}: key {key!r} has shape {tuple(t.shape)}, the model expects "
                                  f"{tuple(param.shape)} (rank {config.rank})")
        if not t.dtype.is_floating_point:
            raise CheckpointError(f"{path}: key {key!r} has dtype {t.dtype}, expected a floating-point dtype")
    with torch.no_grad():
        for key, param in expected.items():
            param.copy_(tensors[key])
    return lora_report(model)


def merge_lora(model: nn.Module) -> None:
    """Merge every adapter of `model` into its base weight (inference); see `LoRALinear.merge`."""
    for m in lora_modules(model).values():
        m.merge()


def unmerge_lora(model: nn.Module) -> None:
    for m in lora_modules(model).values():
        m.unmerge()


@contextmanager
def without_lora(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily put each adapter's base module back in its place: the model as it was before `apply_lora`
    (e.g. to export a packed quantized base, whose adapter is saved on its own). Merged adapters are refused,
    since their base weights hold B A."""
    if any(m.merged for m in lora_modules(model).values()):
        raise ValueError("without_lora needs unmerged adapters (the merged base weights include B A)")
    with without_wrappers(model, LoRALinear):
        yield model
