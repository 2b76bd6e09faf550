"""Imports point one way: experiments, bench -> app -> tasks, quant, distill -> course -> minigpt2 (read with ast,
function-level imports included). The only upward edges allowed are entry points: the `python -m minigpt2.finetune/evaluate` shims
and code under `if __name__ == "__main__":`."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LEVEL = {"minigpt2": 0, "course": 1, "tasks": 2, "quant": 2, "distill": 2, "app": 3, "experiments": 4, "bench": 4}
ENTRY_POINTS = {"minigpt2/finetune.py", "minigpt2/evaluate.py"}


def _main_guard(node: ast.AST) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")


def imports(tree: ast.AST, package: str):
    """(line, imported top-level package) of every import outside `if __name__ == "__main__":` blocks."""
    def walk(node):
        for child in ast.iter_child_nodes(node):
            if _main_guard(child):
                continue
            if isinstance(child, ast.Import):
                for a in child.names:
                    yield child.lineno, a.name.split(".")[0]
            elif isinstance(child, ast.ImportFrom):
                yield child.lineno, package if child.level else (child.module or "").split(".")[0]
            yield from walk(child)
    return walk(tree)


def upward_edges() -> list[str]:
    bad = []
    for package in ("minigpt2", "course", "tasks", "quant", "distill", "app"):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel in ENTRY_POINTS:
                continue
            for line, target in imports(ast.parse(path.read_text(encoding="utf-8")), package):
                if target in LEVEL and target != package and LEVEL[target] >= LEVEL[package]:
                    bad.append(f"{rel}:{line}: {package} imports {target}")
    return bad


def test_imports_point_down():
    assert upward_edges() == []


def test_the_check_sees_function_level_imports():
    """The checker itself: an import inside a function of the library is an upward edge; one under the main
    guard is not."""
    code = "def f():\n    from tasks import get_task\nif __name__ == '__main__':\n    import app.finetune\n"
    found = list(imports(ast.parse(code), "minigpt2"))
    assert found == [(2, "tasks")]
