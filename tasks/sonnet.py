"""Sonnet generation: a causal LM fine-tuned on Shakespeare's sonnets, then asked to finish held-out ones.

Training: each sonnet's 14 lines followed by <|endoftext|>, next-token loss through `minigpt2.losses.lm_loss`.
Evaluation: for each held-out prompt (its first 3 lines) the model samples the rest (temperature 1.2, top-p 0.9
by default, as the course) until <|endoftext|> or until the 14th line is complete — never cut by a small token
budget — and chrF (sacrebleu's `CHRF()` defaults) compares the full sonnets with the true ones. The output file
has the course's layout: a `--Generated Sonnets--` line, then per sonnet its number on a line and its 14 lines.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

import torch

from minigpt2.generate import generate
from minigpt2.losses import lm_loss
from minigpt2.model import GPT2
from minigpt2.prepack import inference_copy
from minigpt2.tokenizer import Tokenizer

from .base import Example, Task, TaskModel
from .readers import Malformed, Sonnet, parse_sonnets, read_sonnets

SONNET_LINES = 14
HEADER = "--Generated Sonnets-- \n\n"


class SonnetLM(TaskModel):
    """Causal LM over the tied head; the loss never builds (B, T, vocab) logits at once if `lm_loss` chunks."""

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.body(batch["input_ids"], batch["attention_mask"])
        return lm_loss(hidden, self.gpt.wte.weight, batch["targets"])


def sonnet_stop(tok: Tokenizer, lines_to_write: int) -> Callable[[list[int]], bool]:
    """A `generate` stop rule: true once the new text holds `lines_to_write` complete non-blank lines."""
    def stop(new_ids: list[int]) -> bool:
        text = tok.decode(new_ids)
        return sum(1 for line in text.split("\n")[:-1] if line.strip()) >= lines_to_write
    return stop


def finish_sonnet(prompt_lines: tuple[str, ...], new_text: str) -> str:
    """Prompt + generated lines, up to 14 non-blank lines. A line holding only a number is dropped: in the
    output layout it would read as the start of a new sonnet."""
    new_lines = [ln.rstrip() for ln in new_text.replace("<|endoftext|>", "").split("\n")]
    kept = [ln for ln in new_lines if ln.strip() and not ln.strip().isdigit()]
    return "\n".join(list(prompt_lines) + kept[:SONNET_LINES - len(prompt_lines)])


class SonnetTask(Task):
    name = "sonnet"
    metric = "chrf"
    lm_targets = True
    files = {"train": "sonnets.txt", "dev": "sonnets_held_out_dev.txt", "dev_true": "TRUE_sonnets_held_out_dev.txt",
             "test": "sonnets_held_out.txt"}

    def train_texts(self, folder: Path, args: argparse.Namespace) -> tuple[list[str], list[Malformed]]:
        """The real training set as plain sonnet texts (synthetic ones are added by `synthetic_texts`)."""
        sonnets, notes = read_sonnets(folder / self.files["train"], expect_lines=SONNET_LINES)
        return [s.text for s in sonnets], notes

    def synthetic_texts(self, args: argparse.Namespace) -> list[str]:
        """Synthetic sonnets to add to the training set (`--synthetic FILE [--synthetic-n N]
        [--synthetic-filter all|perfect]`), in the course's layout; none without --synthetic."""
        if not getattr(args, "synthetic", None):
            return []
        from distill.synthetic import load_synthetic, to_course_layout

        texts = load_synthetic(args.synthetic, n=getattr(args, "synthetic_n", None),
                               filter=getattr(args, "synthetic_filter", "all"))
        return [to_course_layout(t) for t in texts]

    def load(self, folder: Path, split: str, tok: Tokenizer, max_len: int, limit: int | None = None,
             args: argparse.Namespace | None = None) -> tuple[list[Example], list[Malformed]]:
        if split == "train":
            args = args if args is not None else argparse.Namespace()
            texts, notes = self.train_texts(folder, args)
            # --max-train limits the real sonnets; --synthetic-n says how many synthetic ones come on top.
            real = [Example(str(i), (ids + [tok.eot_id])[:max_len])
                    for i, ids in enumerate(tok.encode_batch(texts[:limit]))]
            synthetic = [Example(f"synthetic-{i}", (ids + [tok.eot_id])[:max_len], meta={"source": "synthetic"})
                         for i, ids in enumerate(tok.encode_batch(self.synthetic_texts(args)))]
            return real + synthetic, notes
        prompts, notes = read_sonnets(folder / self.files[split])
        refs: dict[int, Sonnet] = {}
        if split == "dev":
            true, more = read_sonnets(folder / self.files["dev_true"], expect_lines=SONNET_LINES)
            refs, notes = {s.number: s for s in true}, notes + more
            missing = [p.number for p in prompts if p.number not in refs]
            if missing:
                raise ValueError(f"{folder / self.files['dev_true']}: no true sonnet for prompt(s) {missing}")
        examples = []
        for p in prompts[:limit]:
            ids = tok.encode(p.text + "\n")[:max_len]
            meta = {"prompt_lines": p.lines}
            if p.number in refs:
                meta["reference"] = refs[p.number].text
                meta["reference_ids"] = (tok.encode(refs[p.number].text) + [tok.eot_id])[:max_len]
            examples.append(Example(str(p.number), ids, None, meta))
        return examples, notes

    def build(self, gpt: GPT2, args: argparse.Namespace) -> TaskModel:
        return SonnetLM(gpt)

    def loss_examples(self, examples: list[Example]) -> list[Example]:
        """Dev loss is the LM loss on the true held-out sonnets."""
        return [Example(e.id, e.meta["reference_ids"]) for e in examples if "reference_ids" in e.meta]

    def predict(self, module: TaskModel, examples: list[Example], args: argparse.Namespace, tok: Tokenizer,
                device: torch.device) -> list[str]:
        out: list[str] = []
        # On CPU: weights prepacked for oneDNN (~1.4x faster sampling), in bf16 when the run trained under bf16
        # autocast and the CPU has native bf16 (`minigpt2.prepack`); a bf16 model gets the bf16 copy anyway.
        bf16 = getattr(args, "autocast", "off") == "bf16"
        gpt = inference_copy(module.gpt, torch.bfloat16 if bf16 else None)
        for start in range(0, len(examples), args.eval_batch_size):
            chunk = examples[start:start + args.eval_batch_size]
            lines_to_write = [SONNET_LINES - len(e.meta["prompt_lines"]) for e in chunk]
            new = generate(gpt, [e.input_ids for e in chunk], max_new_tokens=args.max_new_tokens,
                           temperature=args.temperature, top_p=args.top_p, eos_id=tok.eot_id,
                           stop=sonnet_stop(tok, max(lines_to_write)), seed=args.seed + start)
            out += [finish_sonnet(e.meta["prompt_lines"], tok.decode([t for t in ids if t != tok.eot_id]))
                    for e, ids in zip(chunk, new)]
        return out

    def score(self, examples: list[Example], predictions: list[str]) -> dict[str, float]:
        from minigpt2.metrics import chrf

        return {"chrf": chrf(predictions, [e.meta["reference"] for e in examples])}

    def output_name(self, split: str, args: argparse.Namespace) -> str:
        return "generated_sonnets_dev.txt" if split == "dev" else "generated_sonnets.txt"

    def write_predictions(self, path: Path, examples: list[Example], predictions: list[str]) -> None:
        write_sonnets(path, [(int(e.id), p) for e, p in zip(examples, predictions)])


def write_sonnets(path: str | Path, sonnets: list[tuple[int, str]]) -> None:
    """The course's generated-sonnets layout."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(HEADER)
        for number, text in sonnets:
            f.write(f"\n{number}\n{text}\n\n")


def read_generated(path: str | Path) -> list[Sonnet]:
    """Sonnets of a generated-sonnets file (the course's layout)."""
    text = Path(path).read_text(encoding="utf-8")
    if not text.startswith("--Generated Sonnets--"):
        raise ValueError(f"{path}:1: expected the line '--Generated Sonnets--'")
    return parse_sonnets(text, str(path))
