"""tools/mutate.py --auto's mutmut table: mutmut's fork server (each mutant's tests forked from a process that
ran no test, nothing imported ahead) only when asked, or for the modules whose tests leave torch's OpenMP pool
running in the stats pass (FORK_SERVER). See docs/testing.md, "Automated mutants"."""

from __future__ import annotations

import importlib.util
import sys
import tomllib
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[2] / "tools" / "mutate.py"


@pytest.fixture(scope="module")
def mutate():
    spec = importlib.util.spec_from_file_location("mutate_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def test_the_mutmut_table_asks_for_the_fork_server_only_when_told(mutate):
    plain = tomllib.loads(mutate.mutmut_config("experiments/runner.py", ("tests/a.py",), ["app", "experiments"]))
    served = tomllib.loads(mutate.mutmut_config("experiments/runner.py", ("tests/a.py",), ["app", "experiments"],
                                                fork_server=True))
    assert "process_isolation" not in plain["tool"]["mutmut"]
    assert (served["tool"]["mutmut"]["process_isolation"], served["tool"]["mutmut"]["forkserver_warmup"]) == (
        "forkserver", "none")
    assert {k: v for k, v in served["tool"]["mutmut"].items() if "forkserver" not in k and k != "process_isolation"} \
        == plain["tool"]["mutmut"] == {
        "source_paths": ["experiments"], "only_mutate": ["experiments/runner.py"], "also_copy": ["app"],
        "pytest_add_cli_args_test_selection": ["tests/a.py"],
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-p", "_mutate_pytest_hook"]}


@pytest.mark.parametrize("argv, served", [
    (["--auto", "experiments/runner.py"], True),  # in FORK_SERVER
    (["--auto", "tasks/sonnet.py"], True),  # in FORK_SERVER: its tests run torch in the stats pass
    (["--auto", "app/generate.py"], True),  # in FORK_SERVER: the same
    (["--auto", "tasks/paraphrase.py"], True),  # in FORK_SERVER: the same
    (["--auto", "app/runmodel.py"], True),  # in FORK_SERVER: the same
    (["--auto", "minigpt2/fast/prepack.py"], True),  # in FORK_SERVER: its tests set two threads in a forked child
    (["--auto", "minigpt2/metrics.py"], False),
    (["--auto", "minigpt2/metrics.py", "--fork-server"], True),
])
def test_the_runner_module_gets_the_fork_server_by_default(mutate, monkeypatch, argv, served):
    seen = []
    monkeypatch.setattr(mutate, "run_auto", lambda module, tests, functions, jobs, timeout, fork_server=False,
                        cpu_slack=None, names=(): seen.append((module, fork_server)) or 0)
    assert mutate.main(argv) == 0
    assert seen == [(argv[1], served)]


@pytest.mark.parametrize("argv, slack, names", [
    (["--auto", "app/finetune.py"], 10.0, ()),  # CPU_SLACK: its fixtures train tiny runs mutmut's limit leaves out
    (["--auto", "app/finetune.py", "--cpu-slack", "3"], 3.0, ()),
    (["--auto", "minigpt2/metrics.py"], None, ()),
    (["--auto", "minigpt2/metrics.py", "--mutant", "a.x_f__mutmut_1", "--mutant", "a.x_g__mutmut_2"], None,
     ("a.x_f__mutmut_1", "a.x_g__mutmut_2")),
])
def test_cpu_slack_and_single_mutants_reach_the_run(mutate, monkeypatch, argv, slack, names):
    seen = []
    monkeypatch.setattr(mutate, "run_auto", lambda module, tests, functions, jobs, timeout, fork_server=False,
                        cpu_slack=None, names=(): seen.append((cpu_slack, names)) or 0)
    assert mutate.main(argv) == 0
    assert seen == [(slack, names)]
