"""benchmarks/ray_census.py: Ray processes are grouped by command line and counted from two snapshots."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.ray_census import census, classify, snapshot, voluntary_switches  # noqa: E402


@pytest.mark.parametrize(
    "cmdline, group",
    [
        ("ray::RayTrainWorker", "training worker"),
        ("ray::TrainController.run", "Train V2 helper actors"),
        ("ray::_AutoscalingCoordinatorActor", "Train V2 helper actors"),
        ("ray::IDLE", "idle pooled workers"),
        ("/venv/lib/python3.11/site-packages/ray/core/src/ray/gcs/gcs_server --log_dir=/tmp", "GCS and raylet"),
        ("/venv/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet --raylet_socket_name=/t", "GCS and raylet"),
        ("ray-dashboard-StateHead-0 (/venv/bin/python -B -c ...)", "dashboard and its modules"),
        (
            "/venv/bin/python /venv/lib/python3.11/site-packages/ray/dashboard/dashboard.py --host",
            "dashboard and its modules",
        ),
        ("ray::DashboardAgent", "dashboard and runtime-env agents"),
        (
            "/venv/bin/python -u /venv/lib/python3.11/site-packages/ray/_private/log_monitor.py",
            "log monitor and autoscaler monitor",
        ),
        ("/usr/bin/python3 -m pytest", None),
        ("ray::SomeUserActor", None),
    ],
)
def test_processes_are_grouped_by_command_line(cmdline, group):
    assert classify(cmdline) == group


def test_only_voluntary_switches_count_as_wakeups():
    status = "Name:\tpython\nvoluntary_ctxt_switches:\t120\nnonvoluntary_ctxt_switches:\t7\n"
    assert voluntary_switches(status) == 120
    assert voluntary_switches("nonvoluntary_ctxt_switches:\t7\n") == 0


def test_census_counts_deltas_per_group_over_the_window():
    before = {
        (1, 1): ("ray::IDLE", 100, 10),
        (1, 2): ("ray::IDLE", 50, 0),
        (2, 2): ("ray::RayTrainWorker", 0, 0),
        (3, 3): ("python other.py", 0, 0),
    }
    after = {
        (1, 1): ("ray::IDLE", 300, 30),
        (1, 2): ("ray::IDLE", 70, 0),
        (2, 2): ("ray::RayTrainWorker", 40, 100),
        (3, 3): ("python other.py", 999, 999),
        (4, 4): ("ray::IDLE", 5000, 5000),
    }  # (4, 4) started in the window
    rows = census(before, after, seconds=2.0, ticks_per_s=100)
    assert rows == [
        {"group": "idle pooled workers", "processes": 1, "wakeups_per_s": 110.0, "cpu_share_of_one_core": 0.1},
        {"group": "training worker", "processes": 1, "wakeups_per_s": 20.0, "cpu_share_of_one_core": 0.5},
    ]


@pytest.mark.skipif(not Path(f"/proc/{os.getpid()}/task").is_dir(), reason="needs Linux /proc")
def test_snapshot_counts_this_process_tree_and_only_voluntary_switches():
    import subprocess
    import time

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.5)
        before = snapshot()
        sum(i * i for i in range(3_000_000))  # some CPU time in this thread
        time.sleep(0.05)  # and one voluntary switch
        after = snapshot()
        me = (os.getpid(), os.getpid())
        assert after[me][2] > before[me][2] and after[me][1] > before[me][1]
        assert (child.pid, child.pid) in after  # a descendant
        assert all(pid != 1 for pid, _ in after)  # not the whole machine
    finally:
        child.kill()
        child.wait()
