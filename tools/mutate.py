"""The mutation check: deliberate one-line bugs, each applied to a scratch copy of the repository, each run
against the test files that hold the contract it breaks. A mutant the tests do not notice is "missed".

    python tools/mutate.py                  # every mutant; exit 1 if any is missed
    python tools/mutate.py --only NAME      # one mutant (or several: --only a --only b)
    python tools/mutate.py --jobs 2         # mutants in parallel (each in its own scratch copy)
    python tools/mutate.py --list           # the mutants, without running anything
    python tools/mutate.py --auto minigpt2/metrics.py [--tests tests/<package>/test_x.py ...] [--function NAME ...]
                                            # mutmut's standard operator mutants of one module; prints survivors
                                            # (--function Class.method: a method's mutants)
    python tools/mutate.py --auto experiments/runner.py --fork-server
                                            # each mutant's run forked from a process that ran no test (torch)

Each mutant names a file, an exact snippet of it (which must occur exactly once, so a mutant that no longer fits
the code is reported as stale instead of silently doing nothing), its replacement, and the test files to run
(`pytest -x -q`, with a timeout). The scratch copy holds the tracked and the untracked-but-not-ignored files
(`git ls-files`), so nothing built or downloaded travels. Before the mutants, the same test files run once on an
unmutated copy: a suite that already fails would make every mutant look caught.

Grow the list with each change: a new contract test should come with a mutant it catches.

`--auto MODULE` leaves the hand list aside and runs mutmut (3.x) on one module of a scratch copy: mutmut's
standard operator mutants (numbers, comparisons, arithmetic, strings, arguments, return values) of every function
in MODULE, each run against the tests given with --tests (default: AUTO_TESTS[MODULE]) that cover its function;
a mutant whose function no chosen test calls is "no tests". The survivors are printed with their diffs.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 300


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    original: str
    replacement: str
    tests: tuple[str, ...]


TRAIN = ("tests/contract/test_contract_train.py",)
GEN = ("tests/contract/test_contract_generate.py",)
STATS = ("tests/contract/test_contract_stats.py",)
READ = ("tests/contract/test_contract_readers.py",)
FAST = ("tests/minigpt2/fast/test_contract_fast.py",)
AGREE = ("tests/minigpt2/fast/test_fast_agreement.py", "tests/minigpt2/fast/test_lora_fused.py")
MEASURES = ("tests/app/test_measures.py",)
# the bootstrap-t and paired tests
INTERVALS = ("tests/experiments/test_intervals.py", "tests/experiments/test_mutants_stats.py")
SET = ("tests/contract/test_contract_settings.py",)
SETFILES = ("tests/app/test_settings_files.py",)
HANDOVER = ("tests/experiments/test_settings_handover.py",)
LOSSES = ("tests/minigpt2/test_losses.py",)
ESTIMATE = ("tests/experiments/test_estimate_by_hand.py",)
RESUME = ("tests/contract/test_contract_resume.py",)
AUTOCAST = ("tests/minigpt2/test_autocast.py",)
CHECK = ("tests/distill/test_mutants_check.py",)
QUANT = ("tests/quant/test_mutants_quant.py",)
DISTILL_SUMMARY = ("tests/distill/test_mutants_distill.py",)
PINNED_FILES = ("tests/experiments/test_experiments.py", "tests/experiments/test_pinned_values.py")
SWEEPS = ("tests/experiments/test_mutants_sweeps.py",)
GENLOOP = ("tests/minigpt2/test_mutants_generation.py",)

# the device decisions of test_autocast.py by name (its other tests train under bf16 autocast: a minute a mutant)
DEVICE_FAST = tuple(f"tests/minigpt2/test_autocast.py::{t}" for t in (
    "test_cpu_native_bf16_reads_the_cpu_flags", "test_cpu_native_bf16_follows_onednn_isa_cap",
    "test_cpu_native_bf16_is_false_without_proc_cpuinfo", "test_cpu_modes",
    "test_faked_cuda_with_bf16_picks_bf16_fused_adamw_nccl", "test_faked_cuda_without_bf16_runs_fp32_and_refuses_bf16",
    "test_bf16_refused_with_one_error_line_where_the_cpu_would_emulate_it",
    "test_training_loop_runs_in_the_dtype_it_is_given_and_asks_the_device_module_for_adamw")) + (
    "tests/contract/test_contract_settings.py::test_one_device_parser",
    "tests/experiments/test_pinned_values.py::test_each_run_gets_the_cores_split_evenly_between_the_jobs",
    "tests/experiments/test_pinned_values.py::test_the_core_count_is_the_affinity_mask_not_the_machine")

MUTANTS: list[Mutant] = [
    # ---- the training loop
    Mutant("train-seed-ignored", "minigpt2/train.py", "torch.Generator().manual_seed(cfg.seed + epoch)",
           "torch.Generator().manual_seed(epoch)", TRAIN),
    Mutant("train-epoch-ignored", "minigpt2/train.py", "torch.Generator().manual_seed(cfg.seed + epoch)",
           "torch.Generator().manual_seed(cfg.seed)", TRAIN),
    Mutant("train-seed-not-for-dropout", "minigpt2/train.py", "seed_everything(cfg.seed + d.rank)\n",
           "seed_everything(d.rank)\n", TRAIN),
    Mutant("train-decay-everything", "minigpt2/train.py",
           '{"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}',
           '{"params": [p for p in params if p.dim() < 2], "weight_decay": weight_decay}', TRAIN),
    Mutant("train-warmup-off-by-one", "minigpt2/train.py", "return (step + 1) / warm", "return step / warm", TRAIN),
    Mutant("train-cosine-quarter", "minigpt2/train.py", "0.5 * (1.0 + math.cos(math.pi * progress))",
           "math.cos(0.5 * math.pi * progress)", TRAIN),
    Mutant("train-decay-ignores-warmup", "minigpt2/train.py",
           "progress = min(1.0, (step - warm) / max(1, total_steps - warm))",
           "progress = min(1.0, (step - warm) / max(1, total_steps))", TRAIN),
    Mutant("train-accum-sums", "minigpt2/train.py", "(loss / group_size).backward()", "loss.backward()", TRAIN),
    Mutant("train-short-group-as-full", "minigpt2/train.py",
           "group_size = min(cfg.grad_accum, len(batches) - group_start)", "group_size = cfg.grad_accum", TRAIN),
    Mutant("train-clip-threshold", "minigpt2/train.py", "if loop.cfg.grad_clip > 0:", "if loop.cfg.grad_clip > 1:",
           TRAIN),
    Mutant("train-nan-goes-on", "minigpt2/train.py", "if not math.isfinite(loss_sum.item()):",
           "if math.isinf(loss_sum.item()):", TRAIN),
    Mutant("train-mode-once", "minigpt2/train.py", "    loop.module.train()\n", "    pass\n", TRAIN),
    Mutant("train-steps-floor", "minigpt2/train.py", "steps_per_epoch = math.ceil(per_rank / cfg.grad_accum)",
           "steps_per_epoch = per_rank // cfg.grad_accum", TRAIN),
    Mutant("train-adam-beta2", "minigpt2/train.py", "betas=(0.9, 0.999)", "betas=(0.9, 0.99)", TRAIN),
    Mutant("train-grads-carry-over", "minigpt2/train.py", "optimizer.zero_grad(set_to_none=True)", "pass", TRAIN),
    Mutant("train-resume-repeats-epoch", "minigpt2/train.py", 'start_epoch = trainer["epoch"] + 1',
           'start_epoch = trainer["epoch"]', TRAIN),
    Mutant("train-best-on-ties", "minigpt2/train.py", "improved = best is None or row[metric] > best[metric]",
           "improved = best is None or row[metric] >= best[metric]", TRAIN),
    Mutant("run-best-every-epoch", "app/finetune.py", "        if end.improved:\n", "        if True:\n", TRAIN),
    Mutant("run-metrics-before-best", "app/finetune.py",
           'return [check_folder, save_best, keep_resume_state(run_dir / "last"), write_metrics]',
           'return [check_folder, write_metrics, save_best, keep_resume_state(run_dir / "last")]', TRAIN),
    Mutant("eval-loop-in-train-mode", "tasks/base.py", "    was_training = module.training\n    module.eval()\n",
           "    was_training = module.training\n", TRAIN),
    Mutant("eval-loop-keeps-eval-mode", "tasks/base.py",
           "    finally:\n        module.train(was_training)\n    return out",
           "    finally:\n        pass\n    return out", TRAIN),
    # ---- generation
    Mutant("gen-nucleus-shortest-row", "minigpt2/fast/decoding.py", "kept = int((~drop).sum(dim=-1).max())",
           "kept = int((~drop).sum(dim=-1).min())", GEN),
    Mutant("gen-nucleus-drops-crossing-token", "minigpt2/fast/decoding.py",
           "drop = (probs.cumsum(dim=-1) - probs) >= top_p", "drop = probs.cumsum(dim=-1) >= top_p", GEN),
    Mutant("gen-nucleus-any-row", "minigpt2/fast/decoding.py", "bool((values.sum(dim=-1) >= top_p).all())",
           "bool((values.sum(dim=-1) >= top_p).any())", GEN),
    Mutant("gen-temperature-multiplies", "minigpt2/fast/decoding.py", "logits = logits.float() / temperature",
           "logits = logits.float() * temperature", GEN),
    Mutant("gen-topk-unnormalised", "minigpt2/fast/decoding.py", "probs = torch.softmax(values, dim=-1)",
           "probs = torch.softmax(logits, dim=-1).gather(-1, ids)", GEN),
    Mutant("gen-positions-count-padding", "minigpt2/generation.py",
           "position_ids = (mask[:, :longest].cumsum(-1) - 1).clamp(min=0)",
           "position_ids = (torch.ones_like(mask[:, :longest]).cumsum(-1) - 1)", GEN),
    Mutant("gen-attends-to-padding", "minigpt2/generation.py", "mask[i, longest - len(p):] = 1", "mask[i, :] = 1",
           GEN),
    Mutant("gen-dropout-on", "minigpt2/generation.py", "    model.eval()\n", "", GEN),
    Mutant("gen-plain-nucleus-drops-crossing-token", "minigpt2/generation.py",
           "probs[(probs.cumsum(dim=-1) - probs) >= top_p] = 0.0", "probs[probs.cumsum(dim=-1) >= top_p] = 0.0", GEN),
    Mutant("gen-plain-temperature-multiplies", "minigpt2/generation.py",
           "probs = torch.softmax(logits.float() / temperature, dim=-1)",
           "probs = torch.softmax(logits.float() * temperature, dim=-1)", GEN),
    Mutant("gen-plain-topk-unnormalised", "minigpt2/generation.py",
           "probs = probs / probs.sum(dim=-1, keepdim=True)", "probs = probs", GEN),
    Mutant("gen-eos-ignored", "minigpt2/generation.py", "if t == eos_id or (stop is not None and stop(out[i])):",
           "if stop is not None and stop(out[i]):", GEN),
    # ---- generate's loop (mutmut leaves the decorated `generate` alone): a scripted stand-in model records each call
    Mutant("gen-loop-no-cap", "minigpt2/generation.py",
           "max_new_tokens = min(max_new_tokens, model.config.n_positions - longest)", "pass", GENLOOP),
    Mutant("gen-loop-full-prompt-allowed", "minigpt2/generation.py", "if max_new_tokens <= 0:",
           "if max_new_tokens < 0:", GENLOOP),
    Mutant("gen-loop-seed-zero-unseeded", "minigpt2/generation.py", "manual_seed(seed) if seed is not None else None",
           "manual_seed(seed) if seed else None", GENLOOP),
    Mutant("gen-loop-pad-one", "minigpt2/generation.py", "eos_id if eos_id is not None else 0",
           "eos_id if eos_id is not None else 1", GENLOOP),
    Mutant("gen-loop-no-mask-when-padded", "minigpt2/generation.py",
           "padded = bool((mask[:, :longest] == 0).any())", "padded = False", GENLOOP),
    Mutant("gen-loop-position-repeats", "minigpt2/generation.py", "next_pos = position_ids[:, -1:] + 1",
           "next_pos = position_ids[:, -1:]", GENLOOP),
    Mutant("gen-loop-mask-one-short", "minigpt2/generation.py", "attention_mask=mask[:, :longest + step + 1]",
           "attention_mask=mask[:, :longest + step]", GENLOOP),
    Mutant("gen-loop-stopped-row-grows", "minigpt2/generation.py", "if done[i]:\n                continue",
           "if False:\n                continue", GENLOOP),
    Mutant("gen-loop-stops-at-first-row", "minigpt2/generation.py", "if all(done) or", "if any(done) or", GENLOOP),
    Mutant("gen-loop-extra-forward", "minigpt2/generation.py", "step == max_new_tokens - 1",
           "step == max_new_tokens", GENLOOP),
    Mutant("gen-loop-stop-sees-row-0", "minigpt2/generation.py", "stop(out[i])", "stop(out[0])", GENLOOP),
    Mutant("gen-loop-leaves-eval-mode", "minigpt2/generation.py", "model.train(model_was_training)",
           "model.train()", GENLOOP),
    Mutant("gen-loop-own-sampler-ignored", "minigpt2/generation.py",
           'sample = getattr(model, "sample_next", sample_next)', "sample = sample_next", GENLOOP),
    Mutant("gen-loop-own-cache-dtype-ignored", "minigpt2/generation.py",
           'cache_dtype = getattr(model, "kv_cache_dtype", model.wte.weight.dtype)',
           "cache_dtype = model.wte.weight.dtype", GENLOOP),
    Mutant("gen-loop-first-position-logits", "minigpt2/generation.py", "model.lm_head(hidden[:, -1])",
           "model.lm_head(hidden[:, 0])", GENLOOP),
    Mutant("gen-loop-top-p-not-passed", "minigpt2/generation.py",
           "sample(logits, temperature, top_k, top_p, generator)",
           "sample(logits, temperature, top_k, None, generator)", GENLOOP),
    # ---- statistics, reference rows, the perfect-sonnet check
    Mutant("stats-quantiles-90", "minigpt2/metrics.py",
           "lo, hi = np.quantile(scores, [(1 - confidence) / 2, (1 + confidence) / 2])",
           "lo, hi = np.quantile(scores, [(1 - confidence), confidence])", STATS),
    Mutant("stats-accuracy-at-90", "experiments/stats.py",
           "        samples, seed, confidence)", "        samples, seed, 0.90)", STATS),
    Mutant("stats-chrf-at-90", "experiments/stats.py", " " * 92 + "confidence)", " " * 92 + "0.90)",
           STATS + INTERVALS),
    Mutant("stats-wilson-z90", "minigpt2/metrics.py", "Z95 = 1.959963984540054", "Z95 = 1.6448536269514722", STATS),
    Mutant("stats-wilson-half-width", "minigpt2/metrics.py", "z * z / (4 * n * n)", "z * z / (2 * n * n)", STATS),
    Mutant("stats-population-std", "experiments/stats.py", "(statistics.stdev(vals) if len(vals) > 1",
           "(statistics.pstdev(vals) if len(vals) > 1", STATS),
    Mutant("stats-minority-class", "experiments/stats.py", "majority = max(sorted(set(labels))",
           "majority = min(sorted(set(labels))", STATS),
    Mutant("refs-wrong-sonnet-is-the-true-one", "experiments/references.py",
           "others = [t for t in training if t != text] or list(training)", "others = list(training)", STATS),
    Mutant("refs-prompt-four-lines", "experiments/references.py", "PROMPT_LINES = 3", "PROMPT_LINES = 4", STATS),
    Mutant("check-meter-low-bound", "distill/check.py", "METER_SYLLABLES = (9, 11)", "METER_SYLLABLES = (8, 11)",
           STATS),
    Mutant("check-meter-rate-high-bound", "distill/check.py", 'summary["meter_line_rate"] = sum(9 <= s <= 11',
           'summary["meter_line_rate"] = sum(9 <= s <= 12', STATS),
    Mutant("check-meter-high-bound", "distill/check.py", "METER_SYLLABLES = (9, 11)", "METER_SYLLABLES = (9, 10)",
           STATS),
    Mutant("check-meter-rate-low-bound", "distill/check.py", 'summary["meter_line_rate"] = sum(9 <= s <= 11',
           'summary["meter_line_rate"] = sum(10 <= s <= 11', STATS),
    Mutant("check-meter-sonnet-one-line-off", "distill/check.py", "sum(r.metrical_lines == r.n_lines for r in results)",
           "sum(r.metrical_lines >= r.n_lines - 1 for r in results)", STATS),
    Mutant("check-fifteen-lines-pass", "distill/check.py", "if len(lines) != 14:", "if len(lines) < 14:", STATS),
    Mutant("check-envelope-scheme", "distill/check.py", 'SCHEME = "ABABCDCDEFEFGG"', 'SCHEME = "ABBACDDCEFFEGG"',
           STATS),
    # ---- task and course readers
    Mutant("read-br-glues-words", "course/readers.py", 'text = re.sub(r"<br\\s*/?>", " ", text',
           'text = re.sub(r"<br\\s*/?>", "", text', READ),
    Mutant("read-review-keeps-its-end", "tasks/sentiment.py", "(ids or [tok.eot_id])[:max_len]",
           "(ids or [tok.eot_id])[-max_len:]", READ),
    Mutant("read-label-flipped", "tasks/base.py", 'Example(r["id"], ids, int(r[label]) if label else None)',
           'Example(r["id"], ids, 1 - int(r[label]) if label else None)', READ),
    Mutant("read-sonnet-prompt-no-newline", "tasks/sonnet.py", 'ids = tok.encode(p.text + "\\n")',
           "ids = tok.encode(p.text)", READ),
    Mutant("read-sonnet-no-eot", "tasks/sonnet.py", "real = [Example(str(i), (ids + [tok.eot_id])[:max_len])",
           "real = [Example(str(i), ids[:max_len])", READ),
    Mutant("read-reference-ids-no-eot", "tasks/sonnet.py",
           'meta["reference_ids"] = (tok.encode(refs[p.number].text) + [tok.eot_id])[:max_len]',
           'meta["reference_ids"] = tok.encode(refs[p.number].text)[:max_len]', READ),
    Mutant("read-collate-mask-padding", "tasks/base.py", "mask[i, :len(e.input_ids)] = 1", "mask[i, :] = 1", READ),
    Mutant("read-subset-unsorted", "tasks/base.py", "    return sorted(chosen)", "    return chosen", READ),
    # ---- speed pieces
    Mutant("fast-chunked-hidden-bf16", "minigpt2/fast/chunked_loss.py", "h32 = h.float()  # no copy in fp32",
           "h32 = h.bfloat16().float()", FAST),
    Mutant("fast-chunked-logits-bf16", "minigpt2/fast/chunked_loss.py",
           "w_logits, h_logits = (w_mm, h_mm) if amp_dtype is not None else (weight, h)",
           "w_logits, h_logits = (w_mm, h_mm) if amp_dtype is not None else (weight.bfloat16(), h.bfloat16())",
           FAST),
    Mutant("fast-chunked-statistics-bf16", "minigpt2/fast/chunked_loss.py", "x = logits.float()  # the block itself",
           "x = logits  # the block itself", LOSSES),
    Mutant("fast-chunked-loss-sum-bf16", "minigpt2/fast/chunked_loss.py",
           "total = torch.zeros((), device=hidden.device, dtype=torch.float32)",
           "total = torch.zeros((), device=hidden.device, dtype=amp_dtype or hidden.dtype)", LOSSES),
    Mutant("fast-cache-attention-skips-cpu-dropout", "minigpt2/fast/decoding.py",
           "if type(m) in (CausalSelfAttention, CPUDropoutAttention)]", "if type(m) is CausalSelfAttention]",
           ("tests/minigpt2/fast/test_generate_fast.py",)),
    Mutant("fast-lora-no-scaling", "minigpt2/fast/lora.py", "y.addmm_(xa, b.t(), alpha=scaling)", "y.addmm_(xa, b.t())",
           FAST),
    Mutant("fast-lora-grad-bf16", "minigpt2/fast/lora.py", "g = grad.reshape(-1, grad.size(-1)).to(w.dtype)",
           "g = grad.reshape(-1, grad.size(-1)).to(torch.bfloat16).to(w.dtype)", FAST),
    Mutant("fast-recompute-rounds", "minigpt2/fast/recompute.py", "return recompute().as_strided(*packed)",
           "return recompute().bfloat16().to(recompute().dtype).as_strided(*packed)", FAST),
    Mutant("fast-dropout-scale-unrounded", "minigpt2/fast/cpu_dropout.py", "return keep, LANES / (LANES - t)",
           "return keep, 1 / (1 - p)", FAST),
    Mutant("fast-attention-scale", "minigpt2/fast/cpu_dropout.py", "(q * (1.0 / math.sqrt(q.size(-1))))",
           "(q * (1.0 / q.size(-1)))", FAST),
    Mutant("fast-prepack-drops-bias", "minigpt2/fast/prepack.py",
           "bias = None if linear is None or linear.bias is None else linear.bias.detach().to(dtype).clone()",
           "bias = None", ("tests/minigpt2/fast/test_mutants_prepack.py",)),  # PackedLinear: copies for several rows
    Mutant("fast-switch-keeps-the-plain-loss", "minigpt2/fast/__init__.py",
           "replace_module(module, name, ChunkedLMLoss())", "pass", AGREE),
    Mutant("lora-plain-no-scaling", "minigpt2/lora.py",
           "return y + F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scaling",
           "return y + F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)", AGREE),
    Mutant("fast-prepack-head-columns", "minigpt2/fast/prepack.py",
           "            return super().lm_head(hidden, token_ids)\n",
           "            return super().lm_head(hidden)[..., :len(token_ids)]\n", FAST),
    Mutant("fast-fp16-qkv-in-fp32", "minigpt2/fast/prepack.py",
           "FusedQKVAttention(model.get_submodule(name), dtype, batch)",
           "FusedQKVAttention(model.get_submodule(name), batch=batch)",
           ("tests/minigpt2/fast/test_decode_step.py",)),
    Mutant("fast-fp16-qkv-order", "minigpt2/fast/prepack.py", "_stacked([attn.query, attn.key, attn.value]), dtype,",
           "_stacked([attn.key, attn.query, attn.value]), dtype,", ("tests/minigpt2/fast/test_decode_step.py",)),
    Mutant("prepack-batch-hint-ignored", "minigpt2/fast/prepack.py", "contiguous(), batch)", "contiguous(), 1)",
           ("tests/minigpt2/fast/test_prepack.py",)),
    Mutant("prepack-slab-drops-bias", "minigpt2/fast/prepack.py",
           "        if linear is not None and linear.bias is not None:\n            bias = torch.zeros(",
           "        if False:\n            bias = torch.zeros(", FAST),
    Mutant("prepack-slab-keeps-the-tail", "minigpt2/fast/prepack.py", "y = y.view(-1)[:self.out_features]",
           "y = y.view(-1)[-self.out_features:]", ("tests/minigpt2/fast/test_slab_linear.py",)),
    Mutant("prepack-slab-column-slow-strides", "minigpt2/fast/prepack.py",
           "(self.slabs, self.in_features, 1), (0, 1, self.in_features))",
           "(self.slabs, self.in_features, 1), (0, 1, 1))",
           ("tests/minigpt2/fast/test_slab_linear.py",)),  # the same values, 5x slower: only the layout shows it
    Mutant("prepack-slab-strided-row-read-in-place", "minigpt2/fast/prepack.py",
           "column = x.contiguous().as_strided(", "column = x.as_strided(",
           ("tests/minigpt2/fast/test_slab_linear.py",)),  # a row whose values are not side by side
    Mutant("prepack-batched-copy-in-slabs", "minigpt2/fast/prepack.py", "dtype == torch.float32 and batch == 1:",
           "dtype == torch.float32:", ("tests/minigpt2/fast/test_prepack.py",)),
    Mutant("predicting-not-for-the-batch", "app/speed.py", "how.autocast_dtype, batch=how.batch_size)",
           "how.autocast_dtype)", ("tests/minigpt2/fast/test_prepack.py",)),
    Mutant("download-full-disk-says-cannot-reach", "minigpt2/download.py",
           "            if _local_failure(e):  # the partial", "            if False:  # the partial",
           ("tests/minigpt2/test_download.py",)),
    Mutant("download-weights-folder-traceback", "minigpt2/download.py",
           "        raise _cannot_write(dest, e) from None", "        raise",
           ("tests/minigpt2/test_download.py",)),
    Mutant("lora-alpha-inf-accepted", "minigpt2/lora.py", "not isinstance(alpha, bool) and math.isfinite(alpha) and",
           "not isinstance(alpha, bool) and", ("tests/minigpt2/test_mutants_lora.py",)),
    Mutant("lora-trainable-string-as-letters", "minigpt2/lora.py",
           'require(not isinstance(self.trainable, str), "trainable"', 'require(True, "trainable"',
           ("tests/minigpt2/test_mutants_lora.py",)),
    Mutant("lora-layer-rslora-string", "minigpt2/lora.py", 'require(isinstance(rslora, bool), "rslora"',
           'require(True, "rslora"', ("tests/minigpt2/test_mutants_lora.py",)),
    Mutant("quora-cut-below-empty", "tasks/paraphrase.py", "room = max(0, room - max(1, (len(ids) - max_len) // 2))",
           "room = room - max(1, (len(ids) - max_len) // 2)", ("tests/tasks/test_mutants_paraphrase.py",)),
    Mutant("resume-state-of-another-shape-broadcast", "minigpt2/resume.py", "if tensors[key].shape != p.shape:",
           "if False:", ("tests/minigpt2/test_mutants_resume.py",)),
    Mutant("run-head-missing-by-another-rule", "app/runmodel.py",
           'missing = [k for k in missing if not k.startswith("gpt.")]',
           'missing = [k for k in missing if "gpt." not in k]', ("tests/app/test_mutants_runmodel.py",)),
    # ---- defaults, validators, run folders
    Mutant("lora-default-attention-only", "app/settings.py", 'LORA_TARGETS = "attn+mlp"', 'LORA_TARGETS = "attn"',
           SET),
    Mutant("lora-preset-without-c-proj", "minigpt2/lora.py",
           '"attn.c_proj", "mlp.c_fc", "mlp.c_proj"),', '"attn.c_proj", "mlp.c_fc"),', SET),
    Mutant("valid-top-p-1-refused", "app/settings.py", "require(0 < s.top_p <= 1,", "require(0 < s.top_p < 1,",
           SET),
    Mutant("valid-generate-top-p-1-refused", "app/settings.py", "require(0 < self.top_p <= 1,",
           "require(0 < self.top_p < 1,", SET),
    Mutant("valid-warmup-0-refused", "minigpt2/train.py", "require(0 <= self.warmup < 1,",
           "require(0 < self.warmup < 1,", SET),
    Mutant("default-epochs", "minigpt2/train.py", "epochs: int = field(default=10,", "epochs: int = field(default=1,",
           SET),
    Mutant("default-seed", "minigpt2/train.py", "DEFAULT_SEED = 11711", "DEFAULT_SEED = 11712", SET),
    Mutant("run-seed-may-change", "minigpt2/train.py",
           'metadata=_doc("seed of everything random (the course\'s)"))',
           'metadata=_doc("seed of everything random (the course\'s)", role="runs"))', SET),
    Mutant("eval-batch-defines", "app/settings.py", '"batch size of evaluation and generation", RUNS)',
           '"batch size of evaluation and generation")', SET),
    Mutant("resume-keeps-stop-after-epoch", "app/cli.py",
           'changes = {"optim.stop_after_epoch": None, "run.overwrite": False,', 'changes = {"run.overwrite": False,',
           SET),
    Mutant("resume-takes-any-flag", "app/cli.py", "if role_of(path) == DEFINES and value != _at(saved, path)]",
           "if False]", SET),
    Mutant("run-base-by-name-only", "app/runfolder.py", 'if (rb or {}).get("sha256") != (nb or {}).get("sha256"):',
           'if (rb or {}).get("file") != (nb or {}).get("file"):', SET),
    Mutant("run-overwrite-inverted", "app/runfolder.py", "    if not settings.run.overwrite:",
           "    if settings.run.overwrite:", SET),
    Mutant("run-holds-needs-every-part", "app/runfolder.py", "return any((run_dir / part).exists()",
           "return all((run_dir / part).exists()", SET),
    # settings files (a sweep's settings.json, an evaluation's <name>.settings.json, a run's config.json)
    Mutant("settings-file-types-unchecked", "app/settings.py", "            _check_json_type(cls, f, d[f.name], at)\n",
           "", SETFILES),
    Mutant("settings-file-group-error-unnamed", "app/runfolder.py",
           "    except UserError as e:  # a group's own check (PrecisionError) too: every refusal names the file\n"
           "        raise SettingsError(f\"{path}: {e}\") from None",
           "    except SettingsError as e:\n        raise SettingsError(f\"{path}: {e}\") from None", SETFILES),
    Mutant("settings-file-old-samples-default", "app/settings.py", 'd["eval"]["samples"] = 1',
           'd["eval"]["samples"] = 4', SETFILES),
    Mutant("sweep-steps-log-elsewhere", "experiments/runner.py", '    log = run_dir / "run.log"\n',
           '    log = run_dir / "evaluate.log"\n', HANDOVER),
    # ---- the sonnet measures and paired comparisons
    Mutant("nll-no-eot", "tasks/sonnet.py", 'seq = prompt + tok.encode("\\n".join(rest)) + [tok.eot_id]',
           'seq = prompt + tok.encode("\\n".join(rest))', MEASURES),
    Mutant("nll-cross-entropy-in-bf16", "tasks/sonnet.py",
           "logits = logits.to(torch.promote_types(logits.dtype, torch.float32))", "logits = logits", MEASURES),
    Mutant("nll-mean-of-ratios", "app/measures.py", "value = float(sums.sum() / counts.sum())",
           "value = float(np.mean(sums / counts))", MEASURES),
    Mutant("form-rhyme-from-three-lines", "distill/check.py", '"rhyme_scheme": len(lines) >= 4 and',
           '"rhyme_scheme": len(lines) >= 3 and', MEASURES),
    Mutant("paired-unpaired", "minigpt2/metrics.py", "draws = [v[i[:, :, None], ",
           "draws = [v[rng.integers(0, n, size=(count, n))[:, :, None], ", INTERVALS),
    Mutant("t-interval-df-off-by-one", "experiments/stats.py", "t = T95[len(vals) - 2]", "t = T95[len(vals) - 1]",
           MEASURES),
    Mutant("samples-first-only", "app/measures.py", "out: dict[str, Any] = {k: float(np.mean([s[k] for s in scores]))",
           "out: dict[str, Any] = {k: float(scores[0][k])", MEASURES),
    Mutant("scored-file-not-checked", "experiments/report.py", "    if now != recorded:",
           "    if now is None:", MEASURES),
    # ---- the dry run's cost (properties: mutmut's --auto leaves decorated functions alone)
    Mutant("estimate-cpu-without-startups", "experiments/estimate.py",
           "return self.cpu_train_s + self.cpu_eval_s + self.cpu_gen_s + self.startup_s",
           "return self.cpu_train_s + self.cpu_eval_s + self.cpu_gen_s", ESTIMATE),
    Mutant("estimate-gpu-smaller-bound", "experiments/estimate.py",
           "return sum(max(f, n) for f, n in zip(self.gpu_flop_s, self.gpu_launch_s))",
           "return sum(min(f, n) for f, n in zip(self.gpu_flop_s, self.gpu_launch_s))", ESTIMATE),
    Mutant("estimate-gpu-without-startups", "experiments/estimate.py",
           "zip(self.gpu_flop_s, self.gpu_launch_s)) + self.gpu_startup_s",
           "zip(self.gpu_flop_s, self.gpu_launch_s))", ESTIMATE),
    # ---- resuming a run: the state restored, the settings taken back, the folder checked
    Mutant("resume-gpu-states-as-text", "minigpt2/resume.py", 'key=lambda k: int(k.rpartition(".")[2])',
           "key=lambda k: k", RESUME),
    Mutant("resume-python-rng-lost", "minigpt2/resume.py", "random.setstate((v, tuple(s), g))",
           "(v, tuple(s), g)", RESUME),
    Mutant("resume-numpy-gaussian-lost", "minigpt2/resume.py", "pos, has_gauss, cached))", "pos))", RESUME),
    Mutant("resume-best-forgotten", "minigpt2/train.py",
           'metrics["epochs"], metrics["best"] = trainer["history"], trainer["best"]',
           'metrics["epochs"] = trainer["history"]', RESUME),
    Mutant("resume-clock-restarts", "minigpt2/train.py", 'return start_epoch, trainer["wall_s"]',
           "return start_epoch, 0.0", RESUME),
    Mutant("resume-stop-inherited", "app/cli.py", 'changes = {"optim.stop_after_epoch": None, "run.overwrite": False,',
           'changes = {"run.overwrite": False,', RESUME),
    Mutant("resume-start-time-reset", "app/finetune.py", '"started": (recorded or {}).get("started") or',
           '"started": None or', RESUME),
    Mutant("resume-edited-config-taken", "app/runfolder.py", "    if edited:  # the settings were changed",
           "    if False:  # the settings were changed", RESUME),
    # ---- the safetensors check a sweep makes before its runs (`_opened` is decorated: mutmut leaves it alone)
    Mutant("checkpoint-header-check-skipped", "minigpt2/checkpoint.py", "    with _opened(Path(path)) as f:\n        f.keys()",
           "    Path(path)", ("tests/minigpt2/test_checkpoint.py",)),
    Mutant("checkpoint-pickle-not-refused", "minigpt2/checkpoint.py", "    _refuse_pickle(path)\n    if not path.is_file()",
           "    if not path.is_file()", ("tests/minigpt2/test_checkpoint.py",)),
    # ---- native bf16 as the bench and autocast read it (an AVX2 CPU emulated by capping oneDNN)
    Mutant("bf16-onednn-cap-ignored", "minigpt2/device.py", "    if cap.strip().upper() in ONEDNN_CAPS_WITHOUT_BF16:",
           "    if False:", AUTOCAST),
    Mutant("bf16-onednn-cap-case", "minigpt2/device.py", "    if cap.strip().upper() in ONEDNN_CAPS_WITHOUT_BF16:",
           "    if cap.strip() in ONEDNN_CAPS_WITHOUT_BF16:", AUTOCAST),
    Mutant("bf16-dnnl-alias-ignored", "minigpt2/device.py",
           'os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or ""',
           'os.environ.get("ONEDNN_MAX_CPU_ISA") or ""', AUTOCAST),
    Mutant("bf16-vnni-cap-counted-native", "minigpt2/device.py", '"AVX512_CORE", "AVX512_CORE_VNNI"})',
           '"AVX512_CORE"})', AUTOCAST),
    # ---- the bugs the 2026-12-07 mutmut round found, put back (docs/testing.md, its four subsections)
    Mutant("check-near-two-vowels", "distill/check.py", '    return re.sub(r"\\bIY R\\b", "IH R", part)',
           "    return part", CHECK),
    Mutant("check-lone-cr-glued", "distill/check.py", 'text.replace("\\r\\n", "\\n").replace("\\r", "\\n")',
           'text.replace("\\r", "")', CHECK),
    Mutant("ste-e4m3-saturated-inside", "quant/ste.py", "inside &= ~past_grid(y, grid)", "inside &= inside", QUANT),
    Mutant("summary-empty-file-summarised", "distill/summary.py",
           "jsonl.is_file() and load_records(jsonl) else None", "jsonl.is_file() else None", PINNED_FILES),
    Mutant("summary-no-perfect-divides", "distill/summary.py", '        if summary["perfect"]:', "        if True:",
           DISTILL_SUMMARY),
    Mutant("sweeps-ratio-ignores-max-train", "experiments/sweeps.py",
           'cli.options_from_argv(opts.finetune_args).get("data.max_train",', '{}.get("data.max_train",', SWEEPS),
    Mutant("export-metadata-key-unnamed", "quant/export.py",
           'f"{path}: metadata key {key!r} missing; a packed checkpoint names its model there"',
           'f"{path}: bad metadata"', QUANT),
]


def source_files() -> list[str]:
    """Tracked files and untracked ones git does not ignore (what a fresh checkout of this work tree holds)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, check=True).stdout.decode()
    return [f for f in out.split("\0") if f and (ROOT / f).is_file()]


def scratch_copy(files: list[str], into: Path) -> Path:
    for f in files:
        target = into / f
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, target)
    return into


def apply(mutant: Mutant, repo: Path) -> None:
    path = repo / mutant.file
    text = path.read_text(encoding="utf-8")
    count = text.count(mutant.original)
    if count != 1:
        raise ValueError(f"{mutant.name}: the snippet occurs {count} times in {mutant.file} (expected once); "
                         f"update the mutant to the code: {mutant.original!r}")
    path.write_text(text.replace(mutant.original, mutant.replacement), encoding="utf-8")


def run_tests(repo: Path, tests: tuple[str, ...], timeout: int) -> tuple[str, str]:
    """('passed' | 'failed' | 'timeout', the last lines of pytest's output) of `tests` in `repo`."""
    env = dict(os.environ, PYTHONPATH=str(repo), PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    try:
        proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", ""
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
    return ("passed" if proc.returncode == 0 else "failed"), tail


def check_imports_come_from(repo: Path) -> None:
    """The scratch copy's packages, not the installed work tree's, must be the ones imported."""
    code = "import minigpt2, tasks, app; print(minigpt2.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, env=dict(os.environ, PYTHONPATH=str(repo)),
                         capture_output=True, text=True, check=True).stdout.strip()
    if not Path(out).resolve().is_relative_to(repo.resolve()):
        raise SystemExit(f"error: the scratch copy imports minigpt2 from {out}, not from {repo}")


def run_mutant(mutant: Mutant, files: list[str], timeout: int) -> tuple[Mutant, str, str, float]:
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix=f"mutant-{mutant.name}-") as tmp:
        repo = scratch_copy(files, Path(tmp))
        try:
            apply(mutant, repo)
        except ValueError as e:
            return mutant, "stale", str(e), time.time() - t0
        status, tail = run_tests(repo, mutant.tests, timeout)
    verdict = {"failed": "caught", "timeout": "caught (timeout)", "passed": "MISSED"}[status]
    return mutant, verdict, tail, time.time() - t0


def baseline_passes(chosen: list[Mutant], files: list[str], timeout: int) -> bool:
    """Run the chosen mutants' test files once on an unmutated copy; False (and why, on stderr) if they fail."""
    t0 = time.time()
    tests = tuple(sorted({t for m in chosen for t in m.tests}))
    with tempfile.TemporaryDirectory(prefix="mutant-baseline-") as tmp:
        repo = scratch_copy(files, Path(tmp))
        check_imports_come_from(repo)
        status, tail = run_tests(repo, tests, timeout)
    if status != "passed":
        print(f"error: the tests fail without any mutant ({status}); fix them first:\n{tail}", file=sys.stderr)
        return False
    print(f"baseline: {len(tests)} test files pass unmutated ({time.time() - t0:.0f} s)", flush=True)
    return True


# --auto: the test files that cover each module users read figures from (the default of --tests).
PINNED = "tests/experiments/test_pinned_values.py"
# the near-duplicate filter and the JSONL readers: generation, resuming, training on the files, the checker
DISTILL_READERS = ("tests/distill/test_mutants_distill.py", "tests/distill/test_distill_generate.py",
                   "tests/distill/test_distill_hardening.py", "tests/distill/test_distill_synthetic.py",
                   "tests/distill/test_distill_check.py", PINNED)
GENERATE_CLI_FAST = tuple(f"tests/app/test_generate_cli.py::test_{name}" for name in (
    "tiny_is_the_same_random_model_every_time", "checkpoint_folder_and_file", "tokens_are_streamed_as_they_are_sampled",
    "text_stream_holds_back_a_character_split_across_tokens", "seed_makes_samples_reproducible_and_num_samples_differ",
    "prompt_file_and_stdin_hold_prompts_separated_by_blank_lines", "bad_flags", "bad_prompt_files",
    "prompt_too_long_and_sonnet_prompt_too_long", "bf16_refused_where_the_cpu_lacks_it", "help_lists_every_flag",
    "fp16_refused_on_the_plain_path_and_without_fbgemm"))

# the benchmark's arithmetic: test_bench.py's quick tests by name (its tiny end-to-end runs of the core lines,
# llama.cpp's workers, LoRA's and the bf16 skip take 2-15 s each, a long time per mutant); docs/testing.md, "The
# benchmark's own arithmetic"
BENCH_FAST = tuple(f"tests/bench/test_bench.py::test_{name}" for name in (
    "bf16_lines_compare_bf16_models", "train_step_flops_counts_head_and_attention",
    "compare_time_interleaves_and_counts_calls", "runner_runs_every_listed_module_and_reports_failures",
    "runner_keeps_finished_modules_when_stopped", "runner_rejects_an_unknown_module",
    "every_module_has_the_one_run_signature", "lora_groups_cover_both_ranks_and_precisions",
    "memory_probe_rejects_unknown_side", "bf16_only_lines_write_their_json_line_by_line",
    "bytes_per_token_of_the_tiny_config_by_hand", "bytes_per_token_count_what_the_decoders_hold",
    "bound_is_bandwidth_over_bytes_and_fraction_is_measured_over_bound", "read_bandwidth_is_the_best_read",
    "cpu_flags_from_cpuinfo", "decode_lines_carry_their_bound", "int8_decode_line_has_its_bound_and_its_fp32_peers",
    "print_bounds_lists_each_side", "print_bounds_columns_by_hand", "read_bandwidth_times_each_read_and_reports_it",
    "cpu_flags_reads_this_machines_cpuinfo_by_default", "llama_f16_line_stands_alone_without_fbgemm_fp16",
    "first_difference", "llama_module_is_skipped_with_a_note_without_llama_cpp", "profile_summary_by_hand",
    "profile_command_on_the_tiny_config", "decode_module_runs_only_the_generation_lines"))

# the training loop: test_train.py's in-process tests by name (its two torchrun tests start child processes, which
# mutmut never records, at a minute a mutant); docs/testing.md, "The training loop and the LM loss"
TRAIN_FAST = tuple(f"tests/minigpt2/test_train.py::test_{name}" for name in (
    "bucketed_batches_cover_every_example_once_and_group_similar_lengths", "lr_schedule_warmup_then_decay",
    "weight_decay_only_on_matrices", "overfitting_a_handful_of_examples_drives_the_loss_near_zero",
    "gradient_accumulation_equals_one_big_batch"))
LM_LOSS = ("tests/minigpt2/fast/test_mutants_chunked_loss.py", "tests/minigpt2/test_losses.py",
           "tests/minigpt2/fast/test_contract_fast.py")

# the model and the one-token step: the new files (transformers' GPT-2 as referee, seconds), test_model.py's tests
# but the two on the 124M config (17 s a mutant), test_decode_step.py's tests at one thread only (its two-thread
# params start OpenMP's pool in the process mutmut forks each mutant from: the fork-after-threads hang, FORK_SERVER,
# which costs every mutant its imports), the sampler files; docs/testing.md, "The model and the one-token step"
MODEL_FAST = tuple(f"tests/minigpt2/test_model.py::test_{name}" for name in (
    "tiny_logits_match_transformers", "training_gradients_match_transformers",
    "gelu_output_is_recomputed_in_backward_not_kept", "right_padding_takes_the_unmasked_causal_path",
    "padding_does_not_change_real_positions", "lm_head_columns_equal_full_logits",
    "kv_cache_equals_full_recomputation", "sequence_longer_than_context_is_an_error",
    "greedy_generation_matches_transformers", "batched_left_padded_generation_equals_one_by_one",
    "batched_greedy_matches_transformers_with_left_padding",
    "hidden_states_at_one_position_per_row_match_transformers", "at_computes_the_last_block_at_one_position_per_row",
    "at_after_a_kv_cache_indexes_the_new_positions"))
DECODE_STEP_1_THREAD = (
    *(f"tests/minigpt2/fast/test_decode_step.py::test_{name}[1 thread]" for name in (
        "the_fast_copy_takes_the_one_token_step_and_agrees_with_the_plain_forward",
        "each_step_matches_a_full_forward_over_the_whole_sequence",
        "left_padded_batch_follows_the_plain_path_row_by_row")),
    *(f"tests/minigpt2/fast/test_decode_step.py::test_{name}" for name in (
        "int8_decoder_takes_the_step_with_the_same_tokens", "bf16_copy_takes_the_step_within_bf16_rounding",
        "lora_layers_are_called_as_they_are_and_training_keeps_the_plain_forward",
        "a_model_of_another_layout_is_left_as_it_is", "the_step_refuses_a_full_cache",
        "packed_linear_gelu_post_op_is_tanh_gelu", "fp16_copy_rounds_only_the_weights",
        "fp16_greedy_tokens_and_logits_follow_fp32", "fp16_falls_back_to_fp32_where_fbgemm_fp16_is_missing",
        "a_model_after_training_decodes_as_the_same_weights_loaded_fresh",
        "fast_copies_read_one_position_per_row_as_the_plain_forward")))

FINETUNE_RUNS = ("tests/app/test_finetune.py", "tests/app/test_lora_finetune.py", "tests/app/test_quant_finetune.py",
                 "tests/app/test_settings_files.py",
                 *(f"tests/app/test_app.py::test_{t}" for t in (
                     "a_bad_settings_file_is_one_error_line_before_any_run_folder", "a_finished_run_is_not_overwritten",
                     "a_lora_run_whose_base_changed_is_refused", "bad_flags_are_one_error_line_before_any_work",
                     "config_records_the_fingerprint", "cuda_without_cuda_is_refused",
                     "divergence_stops_with_epoch_and_step", "empty_train_split_after_filtering_is_an_error",
                     "evaluate_on_a_folder_that_is_no_run", "evaluate_refuses_a_missing_head",
                     "non_finite_checkpoint_is_refused_on_load", "non_finite_label_is_reported_with_file_and_line",
                     "non_utf8_bytes_name_file_and_line", "quant_report_checks_the_group_size_against_the_model",
                     "resume_after_the_data_changed_is_refused", "resume_with_other_settings_is_refused_naming_them")))
AUTO_TESTS: dict[str, tuple[str, ...]] = {
    "minigpt2/metrics.py": ("tests/minigpt2/test_mutants_metrics.py", "tests/contract/test_contract_stats.py", PINNED,
                            "tests/system/test_properties.py", *INTERVALS),
    "app/subsets.py": (PINNED, "tests/app/test_app_study.py"),
    "tasks/base.py": (PINNED, "tests/system/test_properties.py", "tests/app/test_app_study.py"),
    "distill/summary.py": ("tests/distill/test_mutants_distill.py", PINNED, "tests/distill/test_distill_generate.py",
                           "tests/distill/test_distill_hardening.py"),
    "distill/dedup.py": DISTILL_READERS,
    "distill/records.py": DISTILL_READERS,
    "course/jsonl.py": ("tests/course/test_mutants_jsonl.py", "tests/distill/test_mutants_distill.py",
                        "tests/distill/test_distill_hardening.py", "tests/course/test_data_fetch.py"),
    "distill/prices.py": ("tests/distill/test_mutants_distill.py", PINNED, "tests/distill/test_distill_generate.py"),
    # the generation run and the Gemini client: the new file alone is fast (seconds); the two older files add the
    # fake server's slower paths (a killed run resumed, real Retry-After waits, a black-holed endpoint)
    "distill/generate.py": ("tests/distill/test_mutants_generate.py", "tests/distill/test_distill_generate.py",
                            "tests/distill/test_distill_hardening.py"),
    "distill/client.py": ("tests/distill/test_mutants_generate.py", "tests/distill/test_distill_generate.py",
                          "tests/distill/test_distill_hardening.py"),
    "course/sonnets.py": ("tests/course/test_mutants_sonnets.py", "tests/course/test_data_fetch.py",
                          "tests/tasks/test_tasks.py", "tests/distill/test_distill_check.py"),
    "experiments/launch.py": ("tests/experiments/test_mutants_launch.py", "tests/experiments/test_launch_plumbing.py",
                              "tests/experiments/test_launch_properties.py",
                              "tests/experiments/test_experiments_parallel.py", "tests/system/test_properties.py",
                              PINNED),
    "experiments/runner.py": ("tests/experiments/test_mutants_runner.py", "tests/experiments/test_experiments.py",
                              "tests/experiments/test_experiments_inputs.py",
                              "tests/experiments/test_settings_handover.py",
                              "tests/experiments/test_launch_plumbing.py", PINNED),
    "experiments/estimate.py": ("tests/experiments/test_estimate_by_hand.py",),
    # where the course's data files are, their download, and the synthetic sonnets mixed into training
    "course/files.py": ("tests/course/test_mutants_files.py", "tests/course/test_data_fetch.py",
                        "tests/course/test_mutants_readers.py", "tests/course/test_mutants_formats.py"),
    "course/fetch.py": ("tests/course/test_mutants_fetch.py", "tests/course/test_data_fetch.py"),
    "distill/synthetic.py": ("tests/distill/test_mutants_synthetic.py", "tests/distill/test_distill_synthetic.py",
                             "tests/distill/test_distill_mixing.py"),
    # the 2026-12-07 run named test_experiments.py's tests one by one, leaving out the two dry-run tests that time
    # torch steps and the one that starts `python -m experiments` (docs/testing.md, "The sweeps as declared")
    "experiments/sweeps.py": ("tests/experiments/test_mutants_sweeps.py", "tests/experiments/test_experiments.py",
                              PINNED, "tests/experiments/test_mutants_report.py",
                              "tests/experiments/test_mutants_tables.py", "tests/experiments/test_experiments_html.py",
                              "tests/experiments/test_mutants_cli.py", "tests/experiments/test_launch_plumbing.py"),
    "experiments/__main__.py": ("tests/experiments/test_mutants_cli.py", "tests/experiments/test_launch_plumbing.py",
                                "tests/experiments/test_experiments_cost.py", "tests/experiments/test_experiments.py",
                                PINNED),
    "experiments/preflight.py": ("tests/experiments/test_mutants_cli.py", "tests/experiments/test_launch_plumbing.py",
                                 "tests/experiments/test_experiments_cost.py", "tests/experiments/test_experiments.py"),
    "bench/bound.py": ("tests/bench/test_bench.py", "tests/bench/test_mutants_bound.py"),
    "bench/gemv.py": ("tests/bench/test_gemv.py",),
    "bench/common.py": ("tests/bench/test_mutants_common.py", "tests/bench/test_mutants_bound.py", *BENCH_FAST),
    "bench/bench_llama.py": ("tests/bench/test_mutants_llama.py", "tests/bench/test_mutants_bound.py", *BENCH_FAST),
    # fake decoders, clocks and llama_cpp: no thread pools (the worker's sides run in processes of their own, where
    # mutmut records no calls: tests/bench/test_bench.py's llama line reaches none of its functions)
    "bench/bench_quant.py": ("tests/bench/test_mutants_bench_quant.py", *BENCH_FAST),
    "bench/llama_worker.py": ("tests/bench/test_mutants_llama_worker.py", "tests/bench/test_mutants_llama.py"),
    "bench/profile_decode.py": ("tests/bench/test_mutants_profile.py", "tests/bench/test_mutants_bound.py",
                                *BENCH_FAST),
    # with --function train_step_flops --function bench_train --function sonnet_prompts --function left_padded
    "bench/bench_core.py": ("tests/bench/test_mutants_core.py", "tests/bench/test_mutants_bound.py", *BENCH_FAST),
    # test_lora_workers_answer_steps_in_turns (real worker processes, 14 s a mutant) left out, like BENCH_FAST
    "bench/bench_lora.py": ("tests/bench/test_mutants_bench_lora.py",
                            "tests/bench/test_bench.py::test_lora_groups_cover_both_ranks_and_precisions",
                            "tests/bench/test_bench.py::test_lora_step_of_each_side_trains_only_adapters"),
    "bench/smoke.py": ("tests/bench/test_mutants_smoke.py", "tests/system/test_smoke.py"),
    "quant/gguf/__init__.py": ("tests/quant/test_gguf.py", "tests/quant/test_mutants_gguf.py"),
    "distill/check.py": ("tests/distill/test_mutants_check.py", "tests/distill/test_distill_check.py",
                         "tests/distill/test_distill_syllables.py", "tests/distill/test_mutants_syllables.py",
                         "tests/distill/test_distill_hardening.py", "tests/contract/test_contract_stats.py",
                         "tests/app/test_measures.py::test_form_of_a_perfect_sonnet_and_of_each_part_alone",
                         "tests/app/test_measures.py::test_meter_is_nine_to_eleven_syllables_a_line"),
    "quant/formats.py": ("tests/quant/test_mutants_quant.py", "tests/quant/test_quant_formats.py",
                         "tests/quant/test_quant_fake.py", "tests/quant/test_quant_export.py"),
    "quant/export.py": ("tests/quant/test_mutants_quant.py", "tests/quant/test_quant_export.py"),
    "quant/report.py": ("tests/quant/test_mutants_quant.py", "tests/quant/test_quant_export.py",
                        "tests/app/test_app.py::test_quant_report_checks_the_group_size_against_the_model"),
    "quant/int8_linear.py": ("tests/quant/test_mutants_quant.py", "tests/quant/test_quant_int8.py"),
    "quant/fake.py": ("tests/quant/test_mutants_quant.py", "tests/quant/test_quant_fake.py",
                      "tests/quant/test_quant_formats.py", "tests/quant/test_quant_qaft.py",
                      "tests/quant/test_quant_export.py"),
    "quant/ste.py": ("tests/quant/test_mutants_quant.py", "tests/quant/test_quant_formats.py",
                     "tests/quant/test_quant_fake.py"),
    "quant/config.py": ("tests/quant/test_mutants_quant.py", "tests/quant/test_quant_formats.py",
                        "tests/quant/test_quant_fake.py", "tests/quant/test_quant_export.py"),
    "quant/qaft.py": ("tests/quant/test_mutants_quant.py", "tests/quant/test_quant_fake.py",
                      "tests/quant/test_quant_qaft.py", "tests/quant/test_quant_export.py",
                      "tests/quant/test_quant_formats.py"),
    # test_lora.py's adapter reload starts a child process (about 9 s); peft is the referee of test_lora_peft.py
    "minigpt2/lora.py": ("tests/minigpt2/test_mutants_lora.py", "tests/minigpt2/test_lora.py",
                         "tests/minigpt2/test_lora_peft.py"),
    "minigpt2/checkpoint.py": ("tests/minigpt2/test_mutants_checkpoint.py", "tests/minigpt2/test_checkpoint.py",
                               "tests/minigpt2/test_download.py"),
    # the resume contracts (a stopped run resumed to the uninterrupted one, each refusal's line) and the writes a
    # crash must not corrupt; test_contract_resume.py's property runs a few dozen tiny trainings (about 30 s)
    "minigpt2/resume.py": ("tests/minigpt2/test_mutants_resume.py", "tests/contract/test_contract_resume.py",
                           "tests/contract/test_contract_train.py", "tests/system/test_wiring.py"),
    "minigpt2/atomic.py": ("tests/minigpt2/test_mutants_resume.py", "tests/minigpt2/test_atomic.py",
                           "tests/contract/test_contract_resume.py", "tests/minigpt2/test_mutants_checkpoint.py",
                           "tests/minigpt2/test_mutants_download.py", "tests/minigpt2/test_download.py"),
    # which model a run folder gives back: the new file on a small body (seconds) and the lab's stand-ins; the tiny
    # model's runs reach it too (test_finetune.py, test_lora_finetune.py, test_quant_finetune.py, test_app.py's
    # `finished` run), about a minute a mutant: the 2026-12-07 "before" (docs/testing.md), too slow for the default
    "app/runmodel.py": ("tests/app/test_mutants_runmodel.py", "tests/experiments/test_mutants_runner.py",
                        "tests/experiments/test_mutants_cli.py"),
    # the sampler's hand-worked cases and the scripted generate loop, then the older files (the tiny model's runs)
    "minigpt2/generation.py": ("tests/minigpt2/test_mutants_generation.py", "tests/minigpt2/test_generate.py",
                               "tests/minigpt2/fast/test_generate_fast.py"),
    "minigpt2/fast/decoding.py": ("tests/minigpt2/fast/test_mutants_decoding.py",
                                  "tests/minigpt2/fast/test_generate_fast.py",
                                  "tests/minigpt2/fast/test_decode_step.py"),
    "minigpt2/download.py": ("tests/minigpt2/test_mutants_download.py", "tests/minigpt2/test_download.py",
                             "tests/course/test_data_fetch.py"),
    "minigpt2/tokenizer.py": ("tests/minigpt2/test_tokenizer.py",),
    # the biased tiny model's layers and copies first (seconds), then the older files (greedy runs, 2-20 rows)
    "minigpt2/fast/prepack.py": ("tests/minigpt2/fast/test_mutants_prepack.py", "tests/minigpt2/fast/test_prepack.py",
                                 "tests/minigpt2/fast/test_slab_linear.py"),
    "course/readers.py": ("tests/course/test_mutants_readers.py", "tests/contract/test_contract_readers.py",
                          "tests/tasks/test_tasks.py", "tests/course/test_mutants_formats.py"),
    "course/convert.py": ("tests/course/test_mutants_convert.py", "tests/course/test_data_fetch.py"),
    # the held-out NLL's unit tests of test_measures.py and test_copying.py by name: their other tests fine-tune
    # or run a sweep (minutes a mutant); docs/testing.md, "The sonnet task and the course's file formats"
    "tasks/sonnet.py": ("tests/tasks/test_mutants_sonnet.py", "tests/tasks/test_tasks.py",
                        "tests/app/test_measures.py::test_heldout_nll_equals_cross_entropy_on_the_same_tokens",
                        "tests/app/test_measures.py::test_heldout_nll_runs_in_eval_mode_and_restores_training_mode",
                        "tests/app/test_measures.py::test_heldout_nll_under_bf16_autocast_takes_the_cross_entropy_of_"
                        "the_bf16_logits_in_fp32",
                        "tests/app/test_measures.py::test_continuation_is_cut_to_the_context_and_a_prompt_that_fills_"
                        "it_is_an_error",
                        "tests/app/test_copying.py::test_windows_score_every_position_once_with_half_a_context_of_"
                        "slide",
                        "tests/app/test_copying.py::test_heldout_nll_beyond_the_context_scores_every_token_and_the_end_"
                        "of_text",
                        "tests/app/test_copying.py::test_reference_copying_flags_the_wrong_sonnet_as_the_training_set_"
                        "itself"),
    "course/formats.py": ("tests/course/test_mutants_formats.py", "tests/tasks/test_tasks.py",
                          "tests/app/test_app_study.py::test_split_pairs_read_test_labels_beside_the_data_and_none_"
                          "without",
                          "tests/app/test_app_study.py::test_sonnet_split_pairs_read_the_true_test_sonnets",
                          "tests/experiments/test_mutants_aggregates.py"),
    # the generate command: test_generate_cli.py's fast tests by name (the others fine-tune three runs first or start
    # `python -m minigpt2.generate`: a minute a mutant); docs/testing.md, "The generate command and the Quora cloze"
    "app/generate.py": ("tests/app/test_mutants_generate_cli.py", *GENERATE_CLI_FAST),
    "tasks/paraphrase.py": ("tests/tasks/test_mutants_paraphrase.py", "tests/tasks/test_tasks.py",
                            "tests/contract/test_contract_readers.py"),
    "minigpt2/train.py": ("tests/minigpt2/test_mutants_train.py", "tests/contract/test_contract_train.py",
                          *TRAIN_FAST),
    "minigpt2/fast/chunked_loss.py": LM_LOSS,
    "minigpt2/losses.py": LM_LOSS,
    # the fine-tuning run: its writers called alone (seconds, docs/testing.md, "The fine-tuning run's writers"), the
    # tiny runs (seconds each), then the end-to-end files without test_app.py's kill-and-resume test (95 s a mutant);
    # docs/testing.md, "The fine-tuning run and its precision"
    "app/finetune.py": ("tests/app/test_mutants_finetune_files.py", "tests/app/test_mutants_finetune.py",
                        *FINETUNE_RUNS),
    "app/precision.py": ("tests/app/test_mutants_precision.py", *FINETUNE_RUNS),
    "minigpt2/model.py": ("tests/minigpt2/test_mutants_model.py", *MODEL_FAST, *DECODE_STEP_1_THREAD,
                          "tests/minigpt2/test_generate.py",
                          "tests/tasks/test_tasks.py::test_classifier_and_cloze_compute_neither_vocab_logits_nor_rows_"
                          "never_read"),
    # mutmut leaves decorated functions alone: `one_token_forward` (@torch.no_grad()) is mutated only on a work tree
    # without that line (docs/testing.md, "The model and the one-token step")
    "minigpt2/fast/step.py": ("tests/minigpt2/fast/test_mutants_step.py", *DECODE_STEP_1_THREAD,
                              "tests/minigpt2/fast/test_generate_fast.py"),
    # the five small core modules (2026-12-07, docs/testing.md, "Config, device, surgery and the two training speed
    # pieces"): the new files (seconds), then the older ones by name where the rest of a file trains or compiles
    "minigpt2/config.py": ("tests/minigpt2/test_mutants_config.py", "tests/minigpt2/test_mutants_checkpoint.py",
                           "tests/minigpt2/test_checkpoint.py", "tests/quant/test_mutants_gguf.py"),
    "minigpt2/surgery.py": ("tests/minigpt2/test_mutants_surgery.py", "tests/minigpt2/test_surgery.py"),
    "minigpt2/fast/lora.py": ("tests/minigpt2/fast/test_mutants_lora.py", "tests/minigpt2/fast/test_lora_fused.py",
                              "tests/minigpt2/fast/test_contract_fast.py",
                              "tests/minigpt2/fast/test_fast_agreement.py::test_plain_and_fast_training_agree"),
    "minigpt2/fast/recompute.py": ("tests/minigpt2/fast/test_mutants_recompute.py",
                                   "tests/minigpt2/fast/test_contract_fast.py",
                                   "tests/minigpt2/test_model.py::test_gelu_output_is_recomputed_in_backward_not_kept",
                                   "tests/minigpt2/fast/test_fast_agreement.py::test_plain_and_fast_training_agree"),
    "minigpt2/device.py": ("tests/minigpt2/test_mutants_device.py", *DEVICE_FAST),
    # the sentiment head, the cheap CPU dropout and the application's two switches (2026-12-07, docs/testing.md,
    # "Sentiment, the CPU dropout masks and the speed switches"): the new files (seconds), then the older ones
    "tasks/sentiment.py": ("tests/tasks/test_mutants_sentiment.py", "tests/tasks/test_tasks.py",
                           "tests/contract/test_contract_readers.py"),
    "minigpt2/fast/cpu_dropout.py": ("tests/minigpt2/fast/test_mutants_cpu_dropout.py",
                                     "tests/minigpt2/fast/test_cpu_dropout.py",
                                     "tests/minigpt2/fast/test_contract_fast.py"),
    "app/speed.py": ("tests/app/test_mutants_speed.py", "tests/minigpt2/fast/test_fast_agreement.py",
                     "tests/minigpt2/fast/test_compile.py::test_the_application_switches_the_compiled_blocks_in_only_"
                     "with_compile_on_either_path",
                     "tests/minigpt2/fast/test_prepack.py::test_sonnet_evaluation_asks_for_the_bf16_copy_when_the_run_"
                     "is_bf16",
                     "tests/app/test_mutants_finetune.py::test_a_sonnet_run_writes_and_scores_every_sample"),
    # the last four never mutated before (2026-12-07, docs/testing.md, "The gguf command, DDP, the error type and the
    # compiled blocks"): the new files (stand-ins, seconds), then the older ones by name where the rest of a file
    # starts torchrun or compiles
    "app/gguf.py": ("tests/app/test_mutants_gguf_cli.py", "tests/quant/test_gguf.py"),
    "minigpt2/distributed.py": ("tests/minigpt2/test_mutants_distributed.py",
                                "tests/minigpt2/test_train.py::test_a_rank_waiting_for_the_fetch_stops_with_a_clear_"
                                "error", "tests/minigpt2/test_mutants_train.py"),
    "minigpt2/errors.py": ("tests/minigpt2/test_mutants_errors.py", "tests/minigpt2/test_mutants_device.py",
                           "tests/quant/test_gguf.py::test_command_refusals",
                           "tests/quant/test_gguf.py::test_without_the_gguf_package_the_command_says_how_to_install_it"),
    "minigpt2/fast/compiled.py": ("tests/minigpt2/fast/test_mutants_compiled.py",
                                  "tests/minigpt2/fast/test_compile.py::test_a_capped_instruction_set_gets_its_own_"
                                  "inductor_cache",
                                  "tests/minigpt2/fast/test_compile.py::test_the_inductor_cache_is_left_alone_when_"
                                  "chosen_or_uncapped",
                                  "tests/minigpt2/fast/test_compile.py::test_a_nameless_user_gets_a_cache_by_uid"),
    # five front ends never mutated before (2026-12-07, docs/testing.md, "The front ends"): the new files (fakes,
    # seconds), then the older ones; `python -m bench` itself through BENCH_FAST only (its real runs take minutes)
    "bench/__main__.py": ("tests/bench/test_mutants_bench_main.py", *BENCH_FAST),
    "tools/compare_study.py": ("tests/experiments/test_mutants_compare_study.py",),
    "course/__main__.py": ("tests/course/test_mutants_course_main.py", "tests/course/test_data_fetch.py"),
    "app/synthetic.py": ("tests/app/test_mutants_synthetic.py", "tests/distill/test_distill_mixing.py"),
    "tasks/__init__.py": ("tests/tasks/test_mutants_registry.py", "tests/tasks/test_tasks.py",
                          "tests/tasks/test_mutants_paraphrase.py", "tests/tasks/test_mutants_sentiment.py"),
    # the two switches (2026-12-07, docs/testing.md, "The two switches: `minigpt2/fast/__init__.py`"): the new file
    # (seconds), then the older unit tests that call them; test_fast_agreement.py and the batched-copy tests of
    # test_prepack.py left out (minutes a mutant)
    "minigpt2/fast/__init__.py": ("tests/minigpt2/fast/test_mutants_fast_init.py",
                                  "tests/minigpt2/fast/test_generate_fast.py",
                                  "tests/minigpt2/fast/test_mutants_step.py",
                                  "tests/app/test_mutants_speed.py",
                                  *(f"tests/minigpt2/fast/test_decode_step.py::test_{name}" for name in (
                                      "int8_decoder_takes_the_step_with_the_same_tokens",
                                      "bf16_copy_takes_the_step_within_bf16_rounding",
                                      "lora_layers_are_called_as_they_are_and_training_keeps_the_plain_forward",
                                      "a_model_of_another_layout_is_left_as_it_is", "the_step_refuses_a_full_cache",
                                      "fp16_copy_rounds_only_the_weights",
                                      "fp16_falls_back_to_fp32_where_fbgemm_fp16_is_missing",
                                      "a_model_after_training_decodes_as_the_same_weights_loaded_fresh")),
                                  "tests/minigpt2/fast/test_prepack.py::test_sonnet_evaluation_asks_for_the_bf16_copy_"
                                  "when_the_run_is_bf16"),
}


# A test that starts `python -m ...` as a child (PYTHONPATH: the mutants/ copy, its own working folder) would fail
# in mutmut's stats pass: the child's trampolines record their hits through mutmut's config, which mutmut reads from
# the working folder. A child's hits are never collected anyway, so there it runs the original code; in the mutant
# runs it inherits the mutant's name and runs the mutant, as the test process does.
STATS_CHILD_HOOK = "sitecustomize.py"
STATS_CHILD_CODE = """# Written by tools/mutate.py --auto: in mutmut's stats pass a test's child runs the original code.
import os

if os.environ.get("MUTANT_UNDER_TEST") == "stats":
    os.environ["MUTANT_UNDER_TEST"] = ""
"""

# mutmut forks every mutant's test run from the process that ran the stats pass. Where the tests ran torch's
# OpenMP (GNU libgomp) pool there, a forked run that starts a parallel region waits forever on the parent's threads,
# which the fork did not copy (asleep in gomp_team_barrier_wait, no CPU time: mutmut's CPU limit never fires).
# OMP_NUM_THREADS=1 and torch.set_num_threads(1) after each test do not prevent it. These modules' mutants run under
# mutmut's "forkserver" isolation instead: stats and clean runs in forked children, each mutant forked from a server
# that has imported nothing of the tests (warm-up "none"), so every run starts its own pool; about 2 s more a mutant
# (imports). --fork-server turns it on for any module.
FORK_SERVER = {"experiments/runner.py", "tasks/sonnet.py", "minigpt2/generation.py", "minigpt2/fast/decoding.py",
               "app/generate.py", "tasks/paraphrase.py", "app/runmodel.py", "minigpt2/fast/prepack.py",
               "app/speed.py", "minigpt2/fast/__init__.py",  # its tests set one and two threads
               "minigpt2/distributed.py"}  # its tests start a one-rank gloo group (gloo's threads)

# mutmut's CPU limit of a mutant's run is (its tests' recorded time + timeout_constant) x 30, and it records a test's
# call alone: the tiny fine-tuning runs in module fixtures (and the fork server's imports) are not counted. With
# mutmut's 1 s a surviving mutant of app/precision.py whose tests took 0.5 s was stopped at 45 CPU s, before its
# fixtures had trained, and counted as "timeout" (caught); equivalent mutants among them. These modules get more.
CPU_SLACK = {"app/finetune.py": 10.0, "app/precision.py": 10.0}

# The pytest plugin every mutmut run loads. (1) mutmut forks every mutant's test run from one process: tqdm's lock
# across processes (a semaphore made once, in that process) is shared by all of them, and a run killed while it held
# it (a mutant's timeout) leaves every later run that opens a progress bar asleep on it for good (no CPU time, so
# mutmut's CPU limit never ends it). The test runs get tqdm's lock within one process only. (2) mutmut runs a
# mutant against the tests that called its function in the stats pass, and credits a call to the test running at
# the time: a module-scoped fixture's calls (app/finetune.py's tiny runs) went to the first test that set it up
# only, and the tests reading the same run later were never run against the mutants they would kill. The plugin
# credits a wider-scoped fixture's calls to every test that uses the fixture.
PYTEST_HOOK = "_mutate_pytest_hook"
PYTEST_HOOK_CODE = """# Written by tools/mutate.py --auto: loaded by mutmut's pytest (-p) before any test.
import pytest

try:
    from tqdm.std import TqdmDefaultWriteLock
except ImportError:
    pass
else:
    TqdmDefaultWriteLock.mp_lock = None  # no lock across processes: tqdm's lock within a process only

try:
    from mutmut.state import state as _mutmut_state
except ImportError:
    _mutmut_state = None

_CALLS_OF_FIXTURE = {}  # id of a module/class/package/session fixture definition -> the functions its setup called


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef, request):
    if _mutmut_state is None or fixturedef.scope == "function":
        yield
        return
    before = set(_mutmut_state()._stats)
    yield
    _CALLS_OF_FIXTURE.setdefault(id(fixturedef), set()).update(_mutmut_state()._stats - before)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item, nextitem):
    if _mutmut_state is None:
        return
    for definitions in item._fixtureinfo.name2fixturedefs.values():
        for fixturedef in definitions:
            _mutmut_state()._stats.update(_CALLS_OF_FIXTURE.get(id(fixturedef), ()))
"""


def mutmut_config(module: str, tests: tuple[str, ...], packages: list[str], fork_server: bool = False,
                  cpu_slack: float | None = None) -> str:
    """The [tool.mutmut] table that points mutmut at one module, the chosen tests, the rest of the tree copied.
    `fork_server`: each mutant's test run forked from a process that never ran a test (mutmut's "forkserver"
    isolation, nothing imported ahead), not from the one that ran the stats pass (see FORK_SERVER). `cpu_slack`:
    mutmut's `timeout_constant`, the seconds added to a mutant's tests' recorded time before its CPU limit
    ((time + slack) x 30); mutmut records each test's call only, not the module fixtures it sets up nor (with the
    fork server) the imports, so tests whose fixtures train (app/finetune.py's) need more than mutmut's 1 s."""
    top = module.split("/")[0]
    other = [p for p in packages if p != top]
    q = lambda items: "[" + ", ".join(f'"{i}"' for i in items) + "]"  # noqa: E731
    return (f"\n[tool.mutmut]\nsource_paths = {q([top])}\nonly_mutate = {q([module])}\nalso_copy = {q(other)}\n"
            f"pytest_add_cli_args_test_selection = {q(tests)}\n"
            f"pytest_add_cli_args = {q(['-p', 'no:cacheprovider', '-p', PYTEST_HOOK])}\n"
            + ('process_isolation = "forkserver"\nforkserver_warmup = "none"\n' if fork_server else "")
            + (f"timeout_constant = {float(cpu_slack)}\n" if cpu_slack is not None else ""))


def mutmut_results(repo: Path, env: dict[str, str]) -> dict[str, str]:
    out = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=repo, env=env,
                         capture_output=True, text=True).stdout
    return {name.strip(): status.strip() for name, _, status in (ln.rpartition(": ") for ln in out.splitlines())
            if name.strip()}


def run_auto(module: str, tests: tuple[str, ...], functions: list[str], jobs: int, timeout: int,
             fork_server: bool = False, cpu_slack: float | None = None, names: tuple[str, ...] = ()) -> int:
    """mutmut on `module` of a scratch copy with `tests`; prints the counts and each survivor's diff. `names`:
    single mutants by mutmut's name (as a survivor is printed), besides or instead of whole `functions`."""
    if not (ROOT / module).is_file() or not module.endswith(".py"):
        print(f"error: --auto {module}: expected a .py file of this repository, e.g. minigpt2/metrics.py",
              file=sys.stderr)
        return 2
    t0 = time.time()
    files = source_files()
    # Every top-level package, and the files and folders tests read (README.md, docs/, data fixtures) too.
    packages = sorted({f.split("/")[0] for f in files} - {"pyproject.toml"})
    dotted = module[:-3].replace("/", ".").removesuffix(".__init__")  # mutmut names a package by its folder
    # mutmut's keys: x_<function>, or xǁ<Class>ǁ<method> for a method (--function Class.method)
    patterns = [f"{dotted}.xǁ{f.replace('.', 'ǁ')}__mutmut_*" if "." in f else f"{dotted}.x_{f}__mutmut_*"
                for f in functions] + list(names)
    with tempfile.TemporaryDirectory(prefix="mutmut-") as tmp:
        repo = scratch_copy(files, Path(tmp))
        (repo / STATS_CHILD_HOOK).write_text(STATS_CHILD_CODE, encoding="utf-8")
        (repo / f"{PYTEST_HOOK}.py").write_text(PYTEST_HOOK_CODE, encoding="utf-8")
        packages += [STATS_CHILD_HOOK, f"{PYTEST_HOOK}.py"]  # copied into mutants/: a test's child python reads it
        with open(repo / "pyproject.toml", "a", encoding="utf-8") as f:
            f.write(mutmut_config(module, tests, packages, fork_server, cpu_slack))
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # mutmut puts its mutants/ first
        # mutmut forks each mutant's worker from a process that ran torch: a child forked after OpenMP's thread pool
        # started can wait forever on it (asleep at 0 CPU s: a mutant "timeout", or the whole run past its limit).
        env.setdefault("OMP_NUM_THREADS", "1")
        cmd = [sys.executable, "-m", "mutmut", "run", "--max-children", str(jobs), *patterns]
        with subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True) as proc:
            try:
                out = proc.communicate(timeout=timeout)[0]
            except subprocess.TimeoutExpired:  # mutmut, its fork server and the mutant's run: all stopped
                os.killpg(proc.pid, signal.SIGKILL)
                out = proc.communicate()[0]
        finished = proc.returncode == 0
        # mutmut saves each verdict as it comes: a run cut short still reports the mutants it finished ("not
        # checked": not run, as the other functions' mutants under --function)
        results = {n: s for n, s in mutmut_results(repo, env).items() if s != "not checked"}
        if not results:
            print(f"error: mutmut failed (exit {proc.returncode}):\n{out[-3000:]}", file=sys.stderr)
            return 2
        if not finished:
            print(f"error: mutmut did not finish in {timeout} s (raise --timeout) or failed (exit {proc.returncode}); "
                  f"the {len(results)} mutants it finished:", file=sys.stderr)
        survivors = sorted((n for n, s in results.items() if s in ("survived", "suspicious")),
                           key=lambda n: (n.rsplit("_", 1)[0], int(n.rsplit("_", 1)[1])))
        for name in survivors:
            diff = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=repo, env=env,
                                  capture_output=True, text=True).stdout
            changed = [ln for ln in diff.splitlines() if ln[:1] in "+-" and ln[:3] not in ("+++", "---")]
            print(f"survived  {name}\n    " + "\n    ".join(changed))
        for name in sorted(n for n, s in results.items() if s == "timeout"):  # ran past mutmut's limits: caught
            print(f"timeout   {name}")
    counts: dict[str, int] = {}
    for status in results.values():
        counts[status] = counts.get(status, 0) + 1
    print(f"{module}: {len(results)} mutants; " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
          + f"; tests: {' '.join(tests)} ({time.time() - t0:.0f} s)")
    return 2 if not finished else 1 if survivors else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Apply each deliberate bug to a scratch copy and run its tests.")
    p.add_argument("--only", action="append", metavar="NAME", help="run only this mutant (repeatable)")
    p.add_argument("--jobs", type=int, default=1, help="mutants run at once (default 1)")
    p.add_argument("--timeout", type=int, default=TIMEOUT_S, help="seconds per test run (default %(default)s)")
    p.add_argument("--no-baseline", action="store_true", help="skip the run of the tests on the unmutated copy")
    p.add_argument("--list", action="store_true", help="list the mutants and exit")
    p.add_argument("--auto", metavar="MODULE", help="mutmut's operator mutants of one module (see above)")
    p.add_argument("--tests", nargs="+", metavar="FILE", help="--auto: the test files (default: AUTO_TESTS)")
    p.add_argument("--function", action="append", default=[], metavar="NAME",
                   help="--auto: only the mutants of this function, or of Class.method (repeatable)")
    p.add_argument("--fork-server", action="store_true",
                   help="--auto: fork each mutant's run from a process that ran no test (on for FORK_SERVER)")
    p.add_argument("--mutant", action="append", default=[], metavar="NAME",
                   help="--auto: only this mutant, by the name a survivor is printed with (repeatable): an earlier "
                        "run's survivors against new tests")
    p.add_argument("--cpu-slack", type=float, default=None, metavar="S",
                   help="--auto: seconds added to each mutant's recorded test time before mutmut's CPU limit "
                        "(mutmut's timeout_constant, default 1; CPU_SLACK per module)")
    args = p.parse_args(argv)
    if args.auto:
        tests = tuple(args.tests or AUTO_TESTS.get(args.auto, ()))
        if not tests:
            print(f"error: --auto {args.auto}: no default tests for this module; pass --tests", file=sys.stderr)
            return 2
        return run_auto(args.auto, tests, args.function, max(1, args.jobs), args.timeout * 4,
                        args.fork_server or args.auto in FORK_SERVER,
                        args.cpu_slack if args.cpu_slack is not None else CPU_SLACK.get(args.auto),
                        tuple(args.mutant))
    names = [m.name for m in MUTANTS]
    if len(set(names)) != len(names):
        print("error: two mutants share a name", file=sys.stderr)
        return 2
    chosen = MUTANTS
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            print(f"error: --only {', '.join(unknown)}: no such mutant (see --list)", file=sys.stderr)
            return 2
        chosen = [m for m in MUTANTS if m.name in args.only]
    if args.jobs < 1:
        print(f"error: --jobs {args.jobs}: expected an integer >= 1", file=sys.stderr)
        return 2
    if args.list:
        for m in chosen:
            print(f"{m.name:40s} {m.file:28s} {' '.join(m.tests)}")
        return 0

    t0 = time.time()
    files = source_files()
    if not args.no_baseline and not baseline_passes(chosen, files, args.timeout * 2):
        return 2

    results = []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for mutant, verdict, tail, seconds in pool.map(lambda m: run_mutant(m, files, args.timeout), chosen):
            results.append((mutant, verdict))
            print(f"{verdict:17s} {mutant.name:40s} {seconds:5.0f} s", flush=True)
            if verdict in ("MISSED", "stale"):
                print(f"    {mutant.file}: {mutant.original!r} -> {mutant.replacement!r}\n    {tail}", flush=True)
    caught = sum(v.startswith("caught") for _, v in results)
    print(f"{caught}/{len(results)} mutants caught in {time.time() - t0:.0f} s"
          + ("" if caught == len(results) else f"; not caught: "
             f"{', '.join(m.name for m, v in results if not v.startswith('caught'))}"))
    return 0 if caught == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
