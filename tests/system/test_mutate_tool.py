"""tools/mutate.py --auto's mutmut table: mutmut's fork server (each mutant's tests forked from a process that
ran no test, nothing imported ahead) only when asked, or for the modules whose tests leave torch's OpenMP pool
running in the stats pass (FORK_SERVER). See docs/testing.md, "Automated mutants"."""

from __future__ import annotations

import importlib.util
import subprocess
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
    (["--auto", "minigpt2/model.py"], False),  # its default tests keep to one thread (below)
])
def test_the_runner_module_gets_the_fork_server_by_default(mutate, monkeypatch, argv, served):
    seen = []
    monkeypatch.setattr(mutate, "run_auto", lambda module, tests, functions, jobs, timeout, fork_server=False,
                        cpu_slack=None, names=(): seen.append((module, fork_server)) or 0)
    assert mutate.main(argv) == 0
    assert seen == [(argv[1], served)]


def test_the_model_and_step_default_tests_keep_to_one_thread(mutate):
    """Run without the fork server, their tests must not start OpenMP's pool in the process mutmut forks from:
    test_decode_step.py's two-thread params are left out, its other tests named one by one."""
    collected = {"the_fast_copy_takes_the_one_token_step_and_agrees_with_the_plain_forward",
                 "each_step_matches_a_full_forward_over_the_whole_sequence",
                 "left_padded_batch_follows_the_plain_path_row_by_row"}
    for module in ("minigpt2/model.py", "minigpt2/fast/step.py"):
        tests = mutate.AUTO_TESTS[module]
        assert module not in mutate.FORK_SERVER
        step = [t.split("::test_")[1] for t in tests if t.startswith("tests/minigpt2/fast/test_decode_step.py")]
        assert len(step) == 14 and not any("2 threads" in t for t in step)
        assert {t.split("[")[0] for t in step if "[" in t} == collected
        assert all(t.endswith("[1 thread]") for t in step if t.split("[")[0] in collected)


def test_every_default_test_list_names_tests_that_exist(mutate):
    """A test renamed, or a parameter id changed, would stop `--auto` at its baseline run ("not found"): pytest
    collects every file and test id of AUTO_TESTS."""
    root = TOOL.parents[1]
    entries = sorted({t for tests in mutate.AUTO_TESTS.values() for t in tests})
    missing = [t for t in entries if not (root / t.split("::")[0]).is_file()]
    assert not missing, missing
    ids = [t for t in entries if "::" in t]
    collect = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                              "-p", "no:xdist", *ids], cwd=root, capture_output=True, text=True)
    assert collect.returncode == 0, (collect.stdout + collect.stderr)[-3000:]
    assert len([line for line in collect.stdout.splitlines() if "::" in line]) >= len(ids)


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
