"""GGUF files: a minigpt2 GPT-2 as llama.cpp (ollama, LM Studio) runs it, and back.

    python -m quant.gguf MODEL --type q8_0 --out model-q8_0.gguf     (the command: `app.gguf`)

`export_gguf` writes llama.cpp's "gpt2" architecture: its metadata keys, its tensor names and the GPT-2 BPE
vocabulary (tokens, token types, merges, <|endoftext|> as bos/eos) so that llama.cpp needs nothing else.
`load_gguf_model` reads such a file (ours, or one written by llama.cpp's convert_hf_to_gguf.py) back into a GPT2,
dequantizing every tensor, so the loaded model computes with exactly the values llama.cpp reads.

Layout (ggml lists dimensions fastest first; as numpy arrays every matrix is (out, in), nn.Linear's layout):

    token_embd.weight            (vocab, C)   --type; also the LM head (no `output.weight`: GPT-2 ties them)
    position_embd.weight         (n_ctx, C)   f32 always (as llama.cpp's converter keeps it)
    blk.i.attn_norm.weight/bias  (C)          f32 (every 1-D tensor stays f32)
    blk.i.attn_qkv.weight/bias   (3C, C)      --type; query, key, value stacked in that order
    blk.i.attn_output            (C, C)       --type
    blk.i.ffn_norm               (C)          f32
    blk.i.ffn_up                 (4C, C)      --type
    blk.i.ffn_down               (C, 4C)      --type
    output_norm.weight/bias      (C)          f32

Types: f32, f16 (IEEE half), q8_0 (blocks of 32 values: one fp16 scale + 32 int8), q4_0 (blocks of 32: one fp16
scale + 32 4-bit values, value = (nibble - 8) * scale). Blocks run along each row, so q8_0/q4_0 need n_embd to be
a multiple of 32. The quantization itself is the `gguf` package's (`gguf.quants`, which mirrors ggml's reference
quantizers); these blocks are not our int8 (per-row scale) or int4 (per-group fp32 scale) formats.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch

from minigpt2.atomic import atomic_path
from minigpt2.checkpoint import model_from_state
from minigpt2.config import GPT2Config
from minigpt2.errors import UserError
from minigpt2.lora import lora_modules
from minigpt2.model import GPT2
from minigpt2.surgery import unwrap_compiled
from minigpt2.tokenizer import EOT_ID, Tokenizer

from ..qaft import bake, fake_quant_modules, quant_config_of

try:
    import gguf
except ImportError:  # an optional extra: only this command needs it
    gguf = None

TYPES = ("f32", "f16", "q8_0", "q4_0")
BLOCK = 32  # values per q8_0 / q4_0 block
ARCH = "gpt2"
# The run-time file type llama.cpp reports (LlamaFileType: ALL_F32, MOSTLY_F16, MOSTLY_Q8_0, MOSTLY_Q4_0).
FILE_TYPE = {"f32": 0, "f16": 1, "q8_0": 7, "q4_0": 2}
# GGUF token types (llama.cpp's llama_token_type): an ordinary BPE token, and a control token.
NORMAL, CONTROL = 1, 3


class GGUFError(UserError, ValueError):
    """A model that GGUF cannot hold as asked, or a file that is not a GPT-2 GGUF; one `error:` line."""


def require_gguf() -> None:
    """The `gguf` package, or a UserError saying how to install it."""
    if gguf is None:
        raise GGUFError("GGUF files need the gguf package, which is not installed: "
                        "pip install 'minigpt2[gguf]' (or pip install gguf)")


def _qtype(type_: str):
    return {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
            "q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}[type_]


# ---------------------------------------------------------------------------------------------- the vocabulary

@functools.lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte: printable Latin-1 bytes stand for themselves, the rest (control
    characters, space, ...) are shifted to U+0100 onwards. encoder.json and vocab.bpe spell tokens this way."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    out, shifted = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + shifted)
            shifted += 1
    return out


def _split_in_two(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The merge that made `token`: byte-level BPE on its bytes with the lower-ranked merges, stopped at two."""
    parts = [token[i:i + 1] for i in range(len(token))]
    while len(parts) > 2:
        i = min(range(len(parts) - 1), key=lambda j: ranks.get(parts[j] + parts[j + 1], len(ranks)))
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return parts[0], parts[1]


@functools.lru_cache(maxsize=2)
def gpt2_vocab(bpe_dir: str | None = None) -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges) of GPT-2's BPE as GGUF stores them, from minigpt2's tokenizer.

    A token's rank is its id (tiktoken checks this against encoder.json), and the merge that made token 256 + i is
    line i of vocab.bpe; both are recovered from the ranks alone, so no file beyond what the tokenizer reads is
    needed.
    """
    enc = Tokenizer(bpe_dir).enc
    to_text = byte_to_unicode()
    spell = lambda b: "".join(to_text[x] for x in b)  # noqa: E731
    ranks = {enc.decode_single_token_bytes(i): i for i in range(EOT_ID)}
    tokens = [spell(enc.decode_single_token_bytes(i)) for i in range(EOT_ID)] + ["<|endoftext|>"]
    types = [NORMAL] * EOT_ID + [CONTROL]
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) > 1:
            first, second = _split_in_two(token, ranks)
            merges.append(f"{spell(first)} {spell(second)}")
    return tokens, types, merges


# ---------------------------------------------------------------------------------------------- export

def check_exportable(model: GPT2, type_: str) -> None:
    """Refuse, before anything is written, what a GGUF of `type_` cannot hold."""
    if type_ not in TYPES:
        raise GGUFError(f"--type {type_!r}: expected one of {', '.join(TYPES)}")
    for n, m in lora_modules(model).items():
        if not m.merged:
            raise GGUFError(f"LoRA adapter {n} is not merged into its base weight" + (
                "; merge it first (minigpt2.lora.merge_lora)" if m.mergeable else
                f": its base is a {type(m.base).__name__}, into which it cannot merge exactly (a fake-quant base "
                "would quantize W + BA again); GGUF holds no separate adapter"))
    cfg = quant_config_of(model)
    if cfg is not None:
        if cfg.activations:
            raise GGUFError("the model quantizes activations at run time (activations=True); llama.cpp has no such "
                            "step, so a GGUF file would compute something else: export a run without it")
        if type_ != "f32":
            raise GGUFError(f"--type {type_}: the model is fake-quantized as {cfg.weight}; its weights are those "
                            f"quantized values, which {type_} would round again (GGUF blocks are not {cfg.weight}'s "
                            "scales): use --type f32, which holds them exactly")
    C = model.config.n_embd
    if type_ in ("q8_0", "q4_0") and C % BLOCK:
        raise GGUFError(f"--type {type_}: n_embd {C} is not a multiple of {BLOCK}; {type_} stores each row in blocks "
                        f"of {BLOCK} values (use f32 or f16)")


def gguf_state(model: GPT2) -> dict[str, torch.Tensor]:
    """The model's tensors under llama.cpp's gpt2 names, in the layout of the module docstring (all fp32).

    Merged LoRA layers count as their base (`h.0.attn.query.base.weight` is the query's weight, adapter included).
    """
    s = {k.replace(".base.", "."): v.detach().float().cpu() for k, v in model.state_dict().items() if "lora_" not in k}
    out = {"token_embd.weight": s["wte.weight"], "position_embd.weight": s["wpe.weight"],
           "output_norm.weight": s["ln_f.weight"], "output_norm.bias": s["ln_f.bias"]}
    for i in range(model.config.n_layer):
        h, b = f"h.{i}.", f"blk.{i}."
        for p in ("weight", "bias"):
            out[f"{b}attn_norm.{p}"] = s[f"{h}ln_1.{p}"]
            out[f"{b}attn_qkv.{p}"] = torch.cat([s[f"{h}attn.{x}.{p}"] for x in ("query", "key", "value")])
            out[f"{b}attn_output.{p}"] = s[f"{h}attn.c_proj.{p}"]
            out[f"{b}ffn_norm.{p}"] = s[f"{h}ln_2.{p}"]
            out[f"{b}ffn_up.{p}"] = s[f"{h}mlp.c_fc.{p}"]
            out[f"{b}ffn_down.{p}"] = s[f"{h}mlp.c_proj.{p}"]
    return out


def stored_type(name: str, tensor: torch.Tensor, type_: str) -> str:
    """The type a tensor is stored in: `type_` for the matrices, f32 for 1-D tensors and the position table."""
    return type_ if tensor.dim() == 2 and name != "position_embd.weight" else "f32"


def _encode(tensor: torch.Tensor, type_: str) -> np.ndarray:
    return gguf.quants.quantize(tensor.numpy(), _qtype(type_))


def _add_metadata(w, config: GPT2Config, type_: str, name: str, bpe_dir: str | None) -> None:
    w.add_name(name)
    w.add_file_type(FILE_TYPE[type_])
    w.add_context_length(config.n_positions)
    w.add_embedding_length(config.n_embd)
    w.add_feed_forward_length(4 * config.n_embd)
    w.add_block_count(config.n_layer)
    w.add_head_count(config.n_head)
    w.add_layer_norm_eps(config.layer_norm_epsilon)
    tokens, types, merges = gpt2_vocab(bpe_dir)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(EOT_ID)
    w.add_eos_token_id(EOT_ID)
    w.add_add_bos_token(False)  # GPT-2 reads a prompt as it is; <|endoftext|> is not put in front


def export_gguf(model: GPT2, path: str | os.PathLike, type_: str = "f32", name: str = "minigpt2",
                bpe_dir: str | os.PathLike | None = None) -> Path:
    """Write `model` as a GGUF file llama.cpp loads as it is (atomically: a reader never sees half a file).

    model: a plain GPT2 (LoRA adapters merged), or one with weight-only fake-quant for type "f32", whose layers
    are baked into plain ones holding the quantized values (in place). bpe_dir: the folder with encoder.json +
    vocab.bpe (default: the tokenizer's own, see `minigpt2.tokenizer`).
    """
    require_gguf()
    model = unwrap_compiled(model)
    check_exportable(model, type_)
    bake(model)  # weight-only fake-quant (allowed for f32): its quantized values as plain weights
    if any(True for _ in fake_quant_modules(model)):
        raise GGUFError("the model still has fake-quant layers after baking (run-time activation quantization)")
    tensors = gguf_state(model)
    path = Path(path)
    with atomic_path(path) as tmp:
        w = gguf.GGUFWriter(tmp, ARCH)
        _add_metadata(w, model.config, type_, name, str(bpe_dir) if bpe_dir else None)
        for key, t in tensors.items():
            kind = stored_type(key, t, type_)
            w.add_tensor(key, _encode(t, kind), raw_dtype=_qtype(kind))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return path


# ---------------------------------------------------------------------------------------------- import

def _read(path: Path):
    """The GGUFReader of `path`, or a GGUFError naming what is wrong with the file."""
    if not path.is_file():
        raise GGUFError(f"{path}: no such file")
    try:
        return gguf.GGUFReader(path)
    except (ValueError, IndexError, OSError) as e:  # the reader raises ValueError on a bad magic or version
        raise GGUFError(f"{path}: not a readable GGUF file ({e})") from e


def _field(reader, key: str, path: Path):
    field = reader.fields.get(key)
    if field is None:
        raise GGUFError(f"{path}: metadata key {key!r} missing; expected a GGUF of llama.cpp's gpt2 architecture")
    return field.contents()


def read_config(reader, path: Path) -> GPT2Config:
    """The GPT2Config that the file's gpt2.* metadata and its token table describe."""
    arch = _field(reader, "general.architecture", path)
    if arch != ARCH:
        raise GGUFError(f"{path}: general.architecture is {arch!r}; minigpt2 reads only {ARCH!r}")
    get = lambda key: _field(reader, f"{ARCH}.{key}", path)  # noqa: E731
    n_embd, n_ff = int(get("embedding_length")), int(get("feed_forward_length"))
    if n_ff != 4 * n_embd:
        raise GGUFError(f"{path}: {ARCH}.feed_forward_length is {n_ff}; GPT-2's MLP is 4 * n_embd = {4 * n_embd}")
    vocab = {t.name: t for t in reader.tensors}.get("token_embd.weight")
    if vocab is None:
        raise GGUFError(f"{path}: no token_embd.weight tensor")
    # read before the try: a missing key's GGUFError is a ValueError too, and would be reported twice over
    sizes = dict(vocab_size=int(vocab.shape[1]), n_positions=int(get("context_length")), n_embd=n_embd,
                 n_layer=int(get("block_count")), n_head=int(get("attention.head_count")),
                 layer_norm_epsilon=float(get("attention.layer_norm_epsilon")))
    try:
        return GPT2Config(**sizes)
    except ValueError as e:
        raise GGUFError(f"{path}: metadata describes no GPT-2: {e}") from e


def _dequantized(reader, path: Path) -> dict[str, torch.Tensor]:
    """Every tensor as fp32, (out, in) for matrices: the values llama.cpp computes with."""
    out = {}
    for t in reader.tensors:
        try:
            values = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError as e:
            raise GGUFError(f"{path}: tensor {t.name} has type {t.tensor_type.name}, which the gguf package "
                            f"cannot dequantize ({e})") from e
        shape = tuple(int(d) for d in reversed(t.shape))  # ggml lists dimensions fastest first
        out[t.name] = torch.from_numpy(np.array(values, dtype=np.float32).reshape(shape))
    return out


def minigpt2_state(tensors: dict[str, torch.Tensor], config: GPT2Config, path: Path) -> dict[str, torch.Tensor]:
    """`gguf_state` undone: llama.cpp's names back to minigpt2's, the fused qkv split in three."""
    t = dict(tensors)
    try:
        out = {"wte.weight": t.pop("token_embd.weight"), "wpe.weight": t.pop("position_embd.weight"),
               "ln_f.weight": t.pop("output_norm.weight"), "ln_f.bias": t.pop("output_norm.bias")}
        head = t.pop("output.weight", None)
        if head is not None and not torch.equal(head, out["wte.weight"]):
            raise GGUFError(f"{path}: output.weight differs from token_embd.weight; minigpt2's GPT-2 ties them")
        for i in range(config.n_layer):
            h, b = f"h.{i}.", f"blk.{i}."
            for p in ("weight", "bias"):
                out[f"{h}ln_1.{p}"] = t.pop(f"{b}attn_norm.{p}")
                q, k, v = t.pop(f"{b}attn_qkv.{p}").chunk(3, dim=0)
                out.update({f"{h}attn.query.{p}": q, f"{h}attn.key.{p}": k, f"{h}attn.value.{p}": v})
                out[f"{h}attn.c_proj.{p}"] = t.pop(f"{b}attn_output.{p}")
                out[f"{h}ln_2.{p}"] = t.pop(f"{b}ffn_norm.{p}")
                out[f"{h}mlp.c_fc.{p}"] = t.pop(f"{b}ffn_up.{p}")
                out[f"{h}mlp.c_proj.{p}"] = t.pop(f"{b}ffn_down.{p}")
    except KeyError as e:
        raise GGUFError(f"{path}: tensor {e.args[0]} missing for a {config.n_layer}-layer gpt2") from None
    if t:
        raise GGUFError(f"{path}: unexpected tensor(s) {sorted(t)[:4]} for a {config.n_layer}-layer gpt2")
    return {k: v.contiguous() for k, v in out.items()}


def load_gguf_model(path: str | os.PathLike, reader=None) -> GPT2:
    """A GPT2 holding a gpt2 GGUF file's weights, dequantized to fp32 (ours, or llama.cpp's converter's).

    reader: the file's `gguf.GGUFReader` when the caller has one already (reading the 50257 tokens and 50000
    merges of the metadata is most of the time a load takes)."""
    require_gguf()
    path = Path(path)
    reader = reader if reader is not None else _read(path)
    config = read_config(reader, path)
    state = minigpt2_state(_dequantized(reader, path), config, path)
    return model_from_state(config, state, str(path)).eval()
