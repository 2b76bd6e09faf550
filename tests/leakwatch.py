"""A pytest plugin that lists the process-wide state each test leaves changed: what makes a later test's outcome
hang on the order of the files (docs/testing.md, "Order of the tests").

    PYTHONPATH=$PWD python -m pytest -p tests.leakwatch -p no:cacheprovider -q tests/...

After the run, one line per change: the test (its fixtures' teardown included) and what it left changed: torch's
thread count, default dtype, deterministic and grad modes, float32 matmul precision, the working directory,
sys.stdout / stderr / stdin, sys.path, the environment, the SIGINT / SIGTERM / SIGUSR1 handlers, the warning
filters and the umask. A library's first import or torch's first compile also shows (inductor sets
TORCHINDUCTOR_CACHE_DIR, imports add warning filters): those happen in any order.
"""

from __future__ import annotations

import os
import signal
import sys
import warnings

import pytest

_FOUND: list[str] = []


def _snapshot() -> dict:
    import torch

    mask = os.umask(0o022)
    os.umask(mask)
    return {"threads": torch.get_num_threads(), "default dtype": torch.get_default_dtype(),
            "deterministic": torch.are_deterministic_algorithms_enabled(), "grad": torch.is_grad_enabled(),
            "matmul precision": torch.get_float32_matmul_precision(), "cwd": os.getcwd(),
            "sys.stdout": id(sys.stdout), "sys.stderr": id(sys.stderr), "sys.stdin": id(sys.stdin),
            "sys.path": tuple(sys.path), "warning filters": len(warnings.filters), "umask": mask,
            **{f"handler {s.name}": repr(signal.getsignal(s)) for s in (signal.SIGINT, signal.SIGTERM,
                                                                         signal.SIGUSR1)},
            "env": dict(os.environ)}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    before = _snapshot()
    yield
    after = _snapshot()
    for key, was in before.items():
        if key == "env":
            for name in sorted((set(was) | set(after["env"])) - {"PYTEST_CURRENT_TEST"}):
                if was.get(name) != after["env"].get(name):
                    _FOUND.append(f"{item.nodeid}: env {name}: {was.get(name)!r} -> {after['env'].get(name)!r}")
        elif was != after[key]:
            _FOUND.append(f"{item.nodeid}: {key}: {was!r} -> {after[key]!r}"[:300])


def pytest_terminal_summary(terminalreporter):
    terminalreporter.section("state left changed (tests.leakwatch)")
    for line in _FOUND or ["none"]:
        terminalreporter.write_line(line)
