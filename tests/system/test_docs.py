"""The README and docs/ stay true: the README stays short, every relative link resolves, and the quick commands
they show run as written.

A fenced ```bash block preceded by the line `<!-- test: run -->` holds quick commands. The test runs each of its
lines (backslash continuations joined, trailing `# comments` dropped) with bash, one after the other, in a fresh
folder laid out like the repository root (`tests/` and `experiments/` linked in, the project on PYTHONPATH, `python` meaning this
interpreter, nothing downloaded), so a command that writes `checkpoints/runs/...` writes there, and a later block
of the same page can read what an earlier one wrote.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tests import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "checkpoints" / "README.md"]
README_MAX_LINES = 250
MARKER = "<!-- test: run -->"
COMMAND_TIMEOUT_S = 180

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```")


def _rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _outside_code(text: str) -> str:
    """The page without its fenced code blocks and inline code (links there are not links)."""
    out, in_fence = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            in_fence = not in_fence
            continue
        if not in_fence:
            out.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(out)


def _anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    slugs = set()
    for line in _outside_code(text).splitlines():
        m = re.match(r"#+\s+(.*)", line)
        if m:
            title = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower())
            slugs.add(title.replace(" ", "-"))
    return slugs


def marked_blocks(text: str) -> list[list[str]]:
    """The commands of each ```bash block that follows the marker line, one string per command."""
    lines, blocks, i = text.splitlines(), [], 0
    while i < len(lines):
        if lines[i].strip() == MARKER:
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            if j >= len(lines) or lines[j].strip() != "```bash":
                raise ValueError(f"line {i + 1}: {MARKER} must be followed by a ```bash block")
            body, j = [], j + 1
            while j < len(lines) and not FENCE.match(lines[j].strip()):
                body.append(lines[j])
                j += 1
            blocks.append(_commands(body))
            i = j
        i += 1
    return blocks


def _commands(body: list[str]) -> list[str]:
    commands, current = [], ""
    for line in body:
        line = re.sub(r"\s+#.*$", "", line).rstrip()
        if line.endswith("\\"):
            current += line[:-1].strip() + " "
            continue
        current += line.strip()
        if current:
            commands.append(current)
        current = ""
    return commands


def test_readme_is_short():
    n = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines; at most {README_MAX_LINES}: move detail to docs/"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_relative_links_resolve(page):
    text = page.read_text(encoding="utf-8")
    broken = []
    for target in LINK.findall(_outside_code(text)):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest.read_text(encoding="utf-8")):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{_rel(page)}: broken links: {broken}"


def test_marker_parsing():
    text = f"x\n{MARKER}\n```bash\npython -m a --help   # comment\npython -m b \\\n  --c d\n\n```\n"
    assert marked_blocks(text) == [["python -m a --help", "python -m b --c d"]]
    with pytest.raises(ValueError, match="must be followed"):
        marked_blocks(f"{MARKER}\n```python\nx = 1\n```\n")


def test_the_front_door_runs_commands():
    """The README itself shows commands that run, and the docs cover every entry point they name."""
    readme = marked_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    assert any("minigpt2.finetune" in c for block in readme for c in block)
    every = " ".join(c for p in PAGES for block in marked_blocks(p.read_text(encoding="utf-8")) for c in block)
    for entry in ["minigpt2.finetune", "minigpt2.evaluate", "minigpt2.generate", "course", "experiments",
                  "bench", "bench.smoke", "quant.report", "distill.check"]:
        assert f"python -m {entry}" in every, f"no page runs `python -m {entry}`"


def _sandbox(tmp_path: Path) -> dict[str, str]:
    """A folder that looks like the repository root to the commands, and their environment."""
    for folder in ("tests", "experiments"):  # the tiny data the pages' commands read is experiments/tiny_data
        (tmp_path / folder).symlink_to(ROOT / folder, target_is_directory=True)
    bin_dir = tmp_path / ".bin"
    bin_dir.mkdir()
    python = bin_dir / "python"  # a script, not a symlink: a venv's interpreter finds its venv by its own path
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    env = dict(os.environ)
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
               MINIGPT2_CACHE=str(tmp_path / ".cache"), HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    env.pop("MINIGPT2_DATA_DIR", None)  # commands name their data; none may read the real data by accident
    return env


PAGES_WITH_COMMANDS = [p for p in PAGES if MARKER in p.read_text(encoding="utf-8")]


@pytest.mark.parametrize("page", PAGES_WITH_COMMANDS, ids=_rel)
def test_marked_commands_run_as_written(page, tmp_path):
    env = _sandbox(tmp_path)
    for block in marked_blocks(page.read_text(encoding="utf-8")):
        for command in block:
            assert not command.startswith(("pip ", "python -m pytest")), f"{command!r} is not a quick command"
            try:
                done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True,
                                      text=True, timeout=COMMAND_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{_rel(page)}: `{command}` ran over {COMMAND_TIMEOUT_S} s")
            assert done.returncode == 0, (f"{_rel(page)}: `{command}` exited {done.returncode}\n"
                                          f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
