"""Synthetic sonnets from Gemini teachers: generation, the perfect-sonnet check, and loading them for fine-tuning.

- `distill.check`: is a text a "perfect" Shakespearean sonnet (14 lines, ABAB CDCD EFEF GG by CMU rhymes)?
- `distill.client`: the one place that talks to Gemini (google-genai SDK).
- `distill.generate`: many sonnets from a teacher into a resumable JSONL file.
- `distill.dedup`: near-duplicate and held-out-leak filtering.
- `distill.records`: reading those JSONL files, refusing damaged or duplicated ones with the line to fix.
- `distill.summary`: the generation summary (`<file>.summary.json`) that reports read.
- `distill.synthetic`: `load_synthetic` for mixing synthetic sonnets into the sonnet task's training set.

Every error raised on purpose here is a `minigpt2.errors.UserError`.
"""
