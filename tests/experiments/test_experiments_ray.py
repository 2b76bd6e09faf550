"""`--launcher ray` on a real local Ray cluster: a head and a second node (separate raylet processes, CPU only),
the tiny sweep as Ray tasks, the same rows as the sequential sweep. Skipped only where Ray is not installed
(`pip install -e ".[cluster]"`; CI installs it)."""

from __future__ import annotations

import json

import pytest

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from experiments import __main__ as cli  # noqa: E402
from experiments import launch  # noqa: E402
from tests.experiments.test_experiments_parallel import SWEEP, results, rows, sequential, tiny_argv  # noqa: E402,F401


@pytest.fixture(scope="module")
def cluster():
    """Head (two CPUs, so that a run asking for two fits) and a worker node (one CPU); its processes are ended
    by `shutdown` (by their ids)."""
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    yield c
    if ray.is_initialized():
        ray.shutdown()
    c.shutdown()


def test_a_sweep_on_a_two_node_ray_cluster_gives_the_sequential_rows(cluster, sequential, tmp_path, capsys):
    argv = tiny_argv(tmp_path, "--launcher", "ray", "--address", cluster.address, "--cpus-per-run", "1")
    assert cli.main(argv) == 0
    got = results(tmp_path)
    assert got == sequential, [{k: (x.get(k), y.get(k)) for k in {*x, *y} if x.get(k) != y.get(k)}
                               for x, y in zip(got, sequential)]
    out = capsys.readouterr().out
    assert "queued 0, running 0, done 2, failed 0" in out
    for row in rows(tmp_path):
        assert row["arg_threads"] == "1" and row["arg_device"] == "cpu"
        assert json.loads((tmp_path / "runs" / SWEEP / row["run"] / launch.LAUNCH_FILE).read_text())["host"]
    assert not list((tmp_path / "runs" / SWEEP).glob(".storage-probe-*"))  # the probe cleaned up after itself
    assert not ray.is_initialized()  # the sweep left the cluster as it found it
    assert cli.main(argv) == 0  # finished runs are read from their folders; nothing is submitted again
    assert "2 already finished" in capsys.readouterr().out


def test_a_cluster_without_gpus_asks_for_cpus_per_run(cluster, tmp_path):
    with pytest.raises(SystemExit, match=r"^error: --launcher ray: the cluster has no GPU; pass --cpus-per-run"):
        cli.main(tiny_argv(tmp_path, "--launcher", "ray", "--address", cluster.address))


def test_run_folders_a_node_cannot_write_are_refused_before_any_run(cluster, tmp_path):
    """The storage probe: every node must write into the sweep's folder (and this process read it back)."""
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")  # no node can make a folder below it (root or not)
    launch.connect(ray, cluster.address)
    try:
        with pytest.raises(launch.LaunchError, match=r"^--launcher ray: node .* cannot write into .*a-file/sweep "
                                                     r"\(.*storage every node mounts at the same path"):
            launch.check_shared_storage(ray, blocked / "sweep")
        launch.check_shared_storage(ray, tmp_path / "sweep")  # a folder they can write and this process read
        assert list((tmp_path / "sweep").iterdir()) == []  # the probe files are removed
    finally:
        ray.shutdown()


def recording_task(run, root, where, pass_id):
    """Stands in for `launch._ray_task` on a worker: records the placement and the CPUs Ray gave the task."""
    from pathlib import Path

    run_dir = Path(root) / run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    (run_dir / "task.json").write_text(json.dumps({"where": [where.device, where.threads], "cpus": cpus}))
    return "recorded only"


@pytest.mark.parametrize("threads, expected", [(None, 2), (3, 3)])
def test_cpus_per_run_reserves_that_many_cpus_and_hands_them_to_the_run(cluster, tmp_path, monkeypatch,
                                                                         threads, expected):
    from tests.experiments.test_experiments import three_runs

    monkeypatch.setattr(launch, "_ray_task", recording_task)
    result = launch.Ray(cluster.address, cpus_per_run=2, threads=threads, progress=False,
                        poll_s=0.2).launch(three_runs()[:2], tmp_path)
    assert sorted(result.failed) == ["r0", "r1"] and all(e == "recorded only" for e in result.failed.values())
    for name in ("r0", "r1"):
        record = json.loads((tmp_path / name / "task.json").read_text())
        assert record == {"where": ["cpu", expected], "cpus": 2.0}


@pytest.mark.parametrize("per_run, workers", [(2, 1), (1, 3)])
def test_ray_dry_run_schedules_on_the_cluster_cpus_over_cpus_per_run(cluster, per_run, workers, capsys):
    """Three CPUs in the cluster: --cpus-per-run 2 holds one run at a time (3 // 2), 1 holds three."""
    argv = ["lora-targets", "--tiny", "--dry-run", "--stated-rates", "--launcher", "ray", "--address",
            cluster.address, "--cpus-per-run", str(per_run)]
    try:
        assert cli.main(argv) == 0
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert f"on {workers} workers (CPU estimate), longest runs first" in capsys.readouterr().out
