"""Sonnet generation: a causal LM fine-tuned on Shakespeare's sonnets, then asked to finish held-out ones.

Training: each sonnet's 14 lines followed by <|endoftext|>, next-token loss `minigpt2.losses.LMLoss` (the
application's fast path puts the chunked loss in its place: `minigpt2.fast`).
Evaluation: for each held-out prompt (its first 3 lines) the model samples the rest (temperature 1.2, top-p 0.9
by default, as the course) until <|endoftext|> or until the 14th line is complete — never cut by a small token
budget — and chrF (sacrebleu's `CHRF()` defaults) compares the full sonnets with the true ones. The output file
has the course's layout (`course.formats.SonnetFormat`): a `--Generated Sonnets--` line, then per sonnet its
number on a line and its 14 lines.
`predict_samples` draws K continuations per prompt (`--eval-samples K`), the first being `predict`'s.

chrF alone cannot tell learning from copying (the rest of a wrong real sonnet scores about as well), so a run is
also measured by what only learning earns: `heldout_nll`, the teacher-forced negative log-likelihood of each true
held-out continuation given its prompt, conditioned exactly as generation is (the prompt's lines and a newline),
per token, <|endoftext|> included (knowing where a sonnet ends is part of the form). Every token of the
continuation is scored: where prompt + continuation + <|endoftext|> exceed the model's context, the first window
holds the prompt and as much of the continuation as fits, and each later window slides on by half the context
(`nll_windows`), scoring only its new tokens, each then seen with at least half a context of text before it (no
longer the whole prompt; how many tokens were scored with the whole prompt in view is recorded beside the NLL).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from course.files import SonnetFiles
from course.formats import SONNETS, SonnetFormat
from course.readers import DataError, Malformed, read_sonnets
from course.sonnets import Sonnet
from minigpt2.device import autocast
from minigpt2.generation import generate
from minigpt2.losses import LMLoss
from minigpt2.model import GPT2
from minigpt2.tokenizer import Tokenizer

from .base import Example, GenerativeTask, HeldoutNLL, PredictSettings, TaskModel, sample_indices

SONNET_LINES = 14


class SonnetLM(TaskModel):
    """Causal LM over the tied head: next-token cross-entropy (`self.lm_loss`, no parameters)."""

    def __init__(self, gpt: GPT2) -> None:
        super().__init__(gpt)
        self.lm_loss = LMLoss()

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.body(batch["input_ids"], batch["attention_mask"])
        return self.lm_loss(hidden, self.gpt.wte.weight, batch["targets"])


def sonnet_stop(tok: Tokenizer, lines_to_write: int) -> Callable[[list[int]], bool]:
    """A `generate` stop rule: true once the new text holds `lines_to_write` complete non-blank lines."""
    def stop(new_ids: list[int]) -> bool:
        text = tok.decode(new_ids)
        return sum(1 for line in text.split("\n")[:-1] if line.strip()) >= lines_to_write
    return stop


SAMPLE_SEED_STEP = 1_000_003  # seeds of sample k: the base seed + batch start + k * this (no two collide)


def continuation_ids(tok: Tokenizer, prompt_lines: Sequence[str], reference: str, context: int | None = None
                     ) -> tuple[list[int], int]:
    """(prompt + true continuation + <|endoftext|>, number of prompt tokens), cut to `context` when given (the
    whole sequence when None). The prompt is encoded as generation encodes it (its lines, then a newline); the
    continuation is the true sonnet's lines after the prompt's."""
    prompt = tok.encode("\n".join(prompt_lines) + "\n")
    if context is not None and len(prompt) >= context:
        raise DataError(f"a {len(prompt)}-token sonnet prompt leaves nothing to score in a {context}-token context")
    rest = reference.split("\n")[len(prompt_lines):]
    seq = prompt + tok.encode("\n".join(rest)) + [tok.eot_id]
    return seq[:context], len(prompt)


def nll_windows(length: int, n_prompt: int, context: int) -> list[tuple[int, int, int]]:
    """The windows (begin, end, first scored position) that score positions n_prompt..length-1 of a sequence
    once each in a model of `context` positions: the first is [0, min(length, context)); each later one ends
    half a context further (at most at `length`), is a whole context long, and scores only what is new."""
    if n_prompt >= context:
        raise DataError(f"a {n_prompt}-token sonnet prompt leaves nothing to score in a {context}-token context")
    stride = max(1, context // 2)
    end = min(length, context)
    windows = [(0, end, n_prompt)]
    while end < length:
        new_end = min(end + stride, length)
        windows.append((new_end - context, new_end, end))
        end = new_end
    return windows


def finish_sonnet(prompt_lines: tuple[str, ...], new_text: str) -> str:
    """Prompt + generated lines, up to 14 non-blank lines. A line holding only a number is dropped: in the
    output layout it would read as the start of a new sonnet."""
    new_lines = [ln.rstrip() for ln in new_text.replace("<|endoftext|>", "").split("\n")]
    kept = [ln for ln in new_lines if ln.strip() and not ln.strip().isdigit()]
    return "\n".join(list(prompt_lines) + kept[:SONNET_LINES - len(prompt_lines)])


class SonnetTask(GenerativeTask):
    name = "sonnet"
    metric = "chrf"
    lm_targets = True
    format: SonnetFormat = SONNETS  # the course package owns the file names and formats
    files: SonnetFiles = SONNETS.files

    has_head = False
    takes_extra_texts = True  # the application mixes synthetic sonnets in here

    def train_texts(self, folder: Path) -> tuple[list[str], list[Malformed]]:
        """The real training set as plain sonnet texts."""
        sonnets, notes = read_sonnets(folder / self.files.train, expect_lines=SONNET_LINES)
        return [s.text for s in sonnets], notes

    def load(self, folder: Path, split: str, tok: Tokenizer, max_len: int, limit: int | None = None,
             extra_texts: Sequence[str] = (), seed: int = 0) -> tuple[list[Example], list[Malformed]]:
        if split == "train":
            texts, notes = self.train_texts(folder)
            # --max-train limits the real sonnets; the extra (synthetic) ones come on top.
            keep = sample_indices([None] * len(texts), limit, seed, split)
            real = [Example(str(i), (ids + [tok.eot_id])[:max_len])
                    for i, ids in zip(keep, tok.encode_batch([texts[i] for i in keep]))]
            extra = [Example(f"synthetic-{i}", (ids + [tok.eot_id])[:max_len], meta={"source": "synthetic"})
                     for i, ids in enumerate(tok.encode_batch(list(extra_texts)))]
            return real + extra, notes
        prompts, notes = read_sonnets(folder / self.files.split(split))
        refs: dict[int, Sonnet] = {}
        if split == "dev":
            true, more = read_sonnets(folder / self.files.dev_true, expect_lines=SONNET_LINES)
            refs, notes = {s.number: s for s in true}, notes + more
            missing = [p.number for p in prompts if p.number not in refs]
            if missing:
                raise DataError(f"{folder / self.files.dev_true}: no true sonnet for prompt(s) {missing}")
        examples = []
        for p in (prompts[i] for i in sample_indices([None] * len(prompts), limit, seed, split)):
            ids = tok.encode(p.text + "\n")
            if len(ids) >= max_len:  # cut, it would no longer be the prompt; whole, it leaves no room to generate
                raise DataError(f"{folder / self.files.split(split)}: sonnet {p.number}'s prompt is {len(ids)} tokens, "
                                f"but the context holds {max_len} (the model's n_positions, or max_length): "
                                "expected a prompt shorter than the context, with room to generate")
            meta = {"prompt_lines": p.lines}
            if p.number in refs:
                meta["reference"] = refs[p.number].text
                meta["reference_ids"] = (tok.encode(refs[p.number].text) + [tok.eot_id])[:max_len]
            examples.append(Example(str(p.number), ids, None, meta))
        return examples, notes

    def build(self, gpt: GPT2) -> TaskModel:
        return SonnetLM(gpt)

    def loss_examples(self, examples: list[Example]) -> list[Example]:
        """Dev loss is the LM loss on the true held-out sonnets."""
        return [Example(e.id, e.meta["reference_ids"]) for e in examples if "reference_ids" in e.meta]

    def predict_samples(self, module: TaskModel, examples: list[Example], how: PredictSettings, tok: Tokenizer,
                        device: torch.device, samples: int) -> list[list[str]]:
        """`samples` sonnets per prompt: a list per sample, each in the examples' order. Sample k is seeded
        apart from every other (sample 0 is what `predict` returns)."""
        gpt = module.gpt  # the application hands over an inference copy on its fast path (`minigpt2.fast`)
        s = how.sampling
        out: list[list[str]] = [[] for _ in range(samples)]
        for k in range(samples):
            for start in range(0, len(examples), how.batch_size):
                chunk = examples[start:start + how.batch_size]
                lines_to_write = [SONNET_LINES - len(e.meta["prompt_lines"]) for e in chunk]
                new = generate(gpt, [e.input_ids for e in chunk], max_new_tokens=s.max_new_tokens,
                               temperature=s.temperature, top_p=s.top_p, eos_id=tok.eot_id,
                               stop=sonnet_stop(tok, max(lines_to_write)), seed=s.seed + start + SAMPLE_SEED_STEP * k)
                out[k] += [finish_sonnet(e.meta["prompt_lines"], tok.decode([t for t in ids if t != tok.eot_id]))
                           for e, ids in zip(chunk, new)]
        return out

    def heldout_nll(self, module: TaskModel, examples: list[Example], references: dict[str, str],
                    how: PredictSettings, tok: Tokenizer, device: torch.device) -> dict[str, HeldoutNLL]:
        """id -> `HeldoutNLL` of the true continuation `references[id]` (the whole true sonnet) after the example's
        prompt, teacher-forced, every token scored once (`nll_windows` where it exceeds the context).
        Deterministic: eval mode, no sampling; the plain model and head, logits in fp32 (fp64 for an fp64 model).
        Examples without a reference are left out."""
        gpt = module.gpt
        was_training = gpt.training
        gpt.eval()
        sums: dict[str, list] = {}
        rows = []  # one per window: (id, its tokens, the first position it scores, relative to the window)
        for e in (e for e in examples if e.id in references):
            seq, n_prompt = continuation_ids(tok, e.meta["prompt_lines"], references[e.id])
            windows = nll_windows(len(seq), n_prompt, gpt.config.n_positions)
            sums[e.id] = [0.0, 0, len(seq) - n_prompt, windows[0][1] - n_prompt]
            rows += [(e.id, seq[begin:end], first - begin) for begin, end, first in windows]
        with torch.no_grad():
            for start in range(0, len(rows), how.batch_size):
                chunk = rows[start:start + how.batch_size]
                for (key, _, _), (total, count) in zip(chunk, self._window_nll(gpt, chunk, how, tok, device)):
                    sums[key][0] += total
                    sums[key][1] += count
        gpt.train(was_training)
        return {key: HeldoutNLL(*v) for key, v in sums.items()}

    @staticmethod
    def _window_nll(gpt: GPT2, chunk: list[tuple[str, list[int], int]], how: PredictSettings, tok: Tokenizer,
                    device: torch.device) -> list[tuple[float, int]]:
        """(summed NLL, tokens) of each window of `chunk`, batched: a window's tokens from its first scored
        position on are scored."""
        width = max(len(ids) for _, ids, _ in chunk)
        ids = torch.full((len(chunk), width), tok.eot_id, dtype=torch.long)
        targets = torch.full((len(chunk), width), -100, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, (_, seq, first) in enumerate(chunk):
            ids[r, :len(seq)] = torch.tensor(seq)
            mask[r, :len(seq)] = 1
            targets[r, first - 1:len(seq) - 1] = torch.tensor(seq[first:])  # position t predicts t+1
        ids, mask, targets = ids.to(device), mask.to(device), targets.to(device)
        with autocast(device, how.autocast_dtype):
            logits = gpt.lm_head(gpt(ids, attention_mask=mask))
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 -> fp32, fp64 stays
        nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # (B, T)
        kept = targets != -100
        return [(float(nll[r][kept[r]].double().sum()), int(kept[r].sum())) for r in range(len(chunk))]

    def score(self, examples: list[Example], predictions: list[str]) -> dict[str, float]:
        from minigpt2.metrics import chrf

        return {"chrf": chrf(predictions, [e.meta["reference"] for e in examples])}
