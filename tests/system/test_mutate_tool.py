"""tools/mutate.py --auto's mutmut table: mutmut's fork server (each mutant's tests forked from a process that
ran no test, nothing imported ahead) only when asked, or for the modules whose tests leave torch's OpenMP pool
running in the stats pass (FORK_SERVER). See docs/testing.md, "Automated mutants"."""

from __future__ import annotations

import importlib.util
import json
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


def test_a_module_fixture_s_calls_count_for_every_test_that_uses_it(mutate, tmp_path):
    """mutmut runs a mutant against the tests that called its function in the stats pass; the plugin credits the
    calls of a module fixture's setup to each test that uses it, not to the first one only (mutmut's collector,
    as in its pytest runner, reads `state()._stats` at each test's teardown)."""
    pytest.importorskip("mutmut")
    (tmp_path / f"{mutate.PYTEST_HOOK}.py").write_text(mutate.PYTEST_HOOK_CODE, encoding="utf-8")
    (tmp_path / "test_sample.py").write_text(
        "import pytest\n"
        "from mutmut.state import state\n\n"
        "@pytest.fixture(scope='module')\n"
        "def run():\n"
        "    state()._stats.add('m.x_train')\n\n"
        "@pytest.fixture\n"
        "def each():\n"
        "    state()._stats.add('m.x_each')\n\n"
        "def test_first(run): state()._stats.add('m.x_first')\n"
        "def test_second(run, each): pass\n"
        "def test_apart(): pass\n", encoding="utf-8")
    (tmp_path / "collect.py").write_text(
        "import json, sys, pytest\n"
        "from mutmut.state import state\n"
        "seen = {}\n"
        "class Collector:\n"
        "    def pytest_runtest_teardown(self, item, nextitem):\n"
        "        seen[item.name] = sorted(state()._stats)\n"
        "        state()._stats.clear()\n"
        f"code = pytest.main(['-q', '-p', '{mutate.PYTEST_HOOK}', '-p', 'no:cacheprovider', 'test_sample.py'],\n"
        "                   plugins=[Collector()])\n"
        "print(json.dumps({'code': int(code), 'seen': seen}))\n", encoding="utf-8")
    done = subprocess.run([sys.executable, "collect.py"], cwd=tmp_path, capture_output=True, text=True,
                          env={**__import__("os").environ, "PYTHONPATH": str(tmp_path)})
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"code": 0, "seen": {"test_first": ["m.x_first", "m.x_train"],
                                          "test_second": ["m.x_each", "m.x_train"], "test_apart": []}}


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
