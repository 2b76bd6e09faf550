"""Re-score a saved run: load its best checkpoint, predict a split, rewrite the course-format file, report.

    python -m minigpt2.evaluate checkpoints/runs/sst-20260101-120000 [--split dev|test]

The run's own settings (task, mode, sampling) come from its config.json; `--data-dir`, `--tokenizer-dir` and
`--device` may point elsewhere than at training time. Dev is scored (accuracy or chrF); test has no labels, so
only its prediction file is written. Results go to stdout and to RUN_DIR/eval-<split>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tasks import get_task
from tasks.readers import data_dir, require_files

from .checkpoint import load_model
from .finetune import load_run_model
from .tokenizer import Tokenizer
from .train import seed_everything, setup_distributed, write_json


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m minigpt2.evaluate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run_dir", help="a run folder written by `python -m minigpt2.finetune`")
    p.add_argument("--split", choices=["dev", "test"], default="dev", help="which split to predict")
    p.add_argument("--data-dir", default=None, help="course data folder (default: the run's, else "
                                                    "$MINIGPT2_DATA_DIR, else data/)")
    p.add_argument("--tokenizer-dir", default=None, help="offline GPT-2 BPE folder (default: the run's)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    return p


def evaluate_run(run_dir: str | Path, split: str = "dev", data: str | None = None, tokenizer_dir: str | None = None,
                 device: str = "auto") -> dict[str, Any]:
    """Predict `split` with the run's best checkpoint; returns (and saves) the figures."""
    run_dir = Path(run_dir)
    config_file = run_dir / "config.json"
    if not config_file.is_file():
        raise SystemExit(f"{config_file}: not found; is {run_dir} a run folder of minigpt2.finetune?")
    args = argparse.Namespace(**json.loads(config_file.read_text())["args"])
    args.data_dir = data or args.data_dir
    args.tokenizer_dir = tokenizer_dir or args.tokenizer_dir
    args.device = device
    task = get_task(args.task)
    d = setup_distributed(device)
    seed_everything(args.seed)
    module = task.build(load_model(run_dir / "best"), args)
    load_run_model(module, run_dir / "best").to(d.device)
    tok = Tokenizer(args.tokenizer_dir)
    folder = data_dir(args.data_dir)
    needed = [f for key, f in task.files.items() if key.startswith(split)]
    require_files(folder, needed, task.name)
    max_len = min(args.max_length or module.gpt.config.n_positions, module.gpt.config.n_positions)
    examples, notes = task.load(folder, split, tok, max_len, args.max_eval, args)
    for note in notes:
        print(f"warning: skipped/irregular row: {note}", file=sys.stderr)
    preds = task.predict(module, examples, args, tok, d.device)
    name = task.output_name(split, args)
    task.write_predictions(run_dir / name, examples, preds)
    result: dict[str, Any] = {"run_dir": str(run_dir), "task": task.name, "split": split, "examples": len(examples),
                              "predictions": name, "malformed_rows": [str(n) for n in notes]}
    if split == "dev":
        result.update(task.score(examples, preds))
    write_json(run_dir / f"eval-{split}.json", result)
    return result


def main(argv: list[str] | None = None) -> None:
    a = build_parser().parse_args(argv)
    print(json.dumps(evaluate_run(a.run_dir, a.split, a.data_dir, a.tokenizer_dir, a.device), indent=2))


if __name__ == "__main__":
    main()
