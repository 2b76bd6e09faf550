"""Imports point one way: experiments, bench -> app -> tasks, quant, distill -> course -> minigpt2 (read with ast,
function-level imports included). The only upward edges allowed are entry points: the
`python -m minigpt2.finetune/evaluate/generate` shims and code under `if __name__ == "__main__":`. Only the
application (and bench, experiments, tests) imports the speed pieces, `minigpt2.fast`; and no two modules import each
other, directly or around a circle."""
import ast
from pathlib import Path
from tests import ROOT

LEVEL = {"minigpt2": 0, "course": 1, "tasks": 2, "quant": 2, "distill": 2, "app": 3, "experiments": 4, "bench": 4}
ENTRY_POINTS = {"minigpt2/finetune.py", "minigpt2/evaluate.py", "minigpt2/generate.py"}
PACKAGES = ("minigpt2", "course", "tasks", "quant", "distill", "app", "experiments", "bench")
FAST_USERS = ("minigpt2/fast/", "app/", "bench/", "experiments/")  # who may import minigpt2.fast


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


def module_name(rel: str) -> str:
    """"minigpt2/fast/__init__.py" -> "minigpt2.fast"; "app/generate.py" -> "app.generate"."""
    parts = rel[:-3].split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(tree: ast.AST, module: str, is_package: bool, main_guards: bool = False):
    """(line, full dotted name) of every import of `tree` (function-level ones included; those under
    `if __name__ == "__main__":` too when `main_guards`); `from a import b` yields `a.b` as well as `a`, since b
    may be a module."""
    base = module.split(".") if is_package else module.split(".")[:-1]

    def walk(node):
        for child in ast.iter_child_nodes(node):
            if _main_guard(child) and not main_guards:
                continue
            if isinstance(child, ast.Import):
                for a in child.names:
                    yield child.lineno, a.name
            elif isinstance(child, ast.ImportFrom):
                root = ".".join(base[:len(base) - child.level + 1] if child.level else [])
                target = ".".join(p for p in (root, child.module or "") if p)
                yield child.lineno, target
                for a in child.names:
                    yield child.lineno, f"{target}.{a.name}"
            yield from walk(child)
    return walk(tree)


def project_modules() -> dict[str, tuple[str, ast.AST]]:
    """Dotted module name -> (path relative to the root, parsed tree) of every module of the project's packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            found[module_name(rel)] = (rel, ast.parse(path.read_text(encoding="utf-8")))
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports: at module level, in functions and under main guards (a command
    that imports the module importing it is a circle too)."""
    modules = project_modules()
    graph = {}
    for name, (rel, tree) in modules.items():
        imported = imported_modules(tree, name, rel.endswith("__init__.py"), main_guards=True)
        targets = {t for _, t in imported if t in modules}
        graph[name] = targets - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One circle of `graph` as [a, b, ..., a], or [] when there is none (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        path.pop()
        return []

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def fast_importers() -> list[str]:
    """Files outside `minigpt2/fast/`, the application, bench and experiments that import `minigpt2.fast`."""
    bad = []
    for name, (rel, tree) in project_modules().items():
        if rel.startswith(FAST_USERS):
            continue
        for line, target in imported_modules(tree, name, rel.endswith("__init__.py")):
            if target == "minigpt2.fast" or target.startswith("minigpt2.fast."):
                bad.append(f"{rel}:{line}: imports {target}")
    return bad


def test_only_the_application_switches_the_speed_pieces_in():
    """The plain library files, tasks, quant and distill never import `minigpt2.fast`."""
    assert fast_importers() == []


def test_the_fast_check_sees_relative_imports():
    code = "from . import fast\nfrom .fast.prepack import prepacked\nimport minigpt2.fast\n"
    found = {t for _, t in imported_modules(ast.parse(code), "minigpt2.generation", False)}
    assert {"minigpt2.fast", "minigpt2.fast.prepack", "minigpt2.fast.prepack.prepacked"} <= found
    inner = {t for _, t in imported_modules(ast.parse("from ..model import GPT2\n"), "minigpt2.fast", True)}
    assert "minigpt2.model" in inner


def test_the_import_graph_has_no_circle():
    assert find_cycle(import_graph()) == []


def test_the_circle_check_sees_the_old_generate_trampoline():
    """The library's generate ending in `if __name__ == "__main__": from app.generate import main`, imported by
    app.generate, was a circle."""
    tree = ast.parse('if __name__ == "__main__":\n    from app.generate import main\n')
    edges = {t for _, t in imported_modules(tree, "minigpt2.generate", False, main_guards=True)}
    assert find_cycle({"minigpt2.generate": edges & {"app.generate"}, "app.generate": {"minigpt2.generate"}})


def test_the_circle_check_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []
