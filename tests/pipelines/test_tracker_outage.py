"""The tracker rides through an outage of the tracking store: metrics are buffered in order, sent again
with later epochs and at the end of the run, and the run fails only when the outage outlasts its bound.
A fake MLflow client plays the store (no Ray, no server), except in the last tests, where MLflow's own
client talks to a port where nothing listens and to a server that answers 503."""

from __future__ import annotations

import http.server
import json
import logging
import math
import os
import socket
import threading

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST

from pipelines.jsonio import dumps
from pipelines.track.tracker import (
    ATTEMPT_ENV,
    ATTEMPT_TIMEOUT_S,
    BATCH_METRICS,
    Tracker,
    TrackingStoreError,
    is_transient,
)

URI = "http://alice:s3cr3t@mlflow.example:5000"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class FakeClient:
    """Records every metric the store took; ``down`` makes requests fail as MLflow does when the server
    is down (an MlflowException with code INTERNAL_ERROR); ``up_at`` brings it back at that clock time."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.logged: list[tuple[str, float, int, int]] = []
        self.requests = 0
        self.down = False
        self.up_at: float | None = None
        self.clock = clock
        self.fail_after_chunks: int | None = None  # the store goes down after taking this many batches
        self.env_seen: list[dict[str, str | None]] = []

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        self.requests += 1
        self.env_seen.append({k: os.environ.get(k) for k in [*ATTEMPT_ENV, "MLFLOW_HTTP_REQUEST_TIMEOUT"]})
        if self.up_at is not None and self.clock is not None and self.clock() >= self.up_at:
            self.down = False
        if self.fail_after_chunks is not None:
            if self.fail_after_chunks == 0:
                self.down = True
            self.fail_after_chunks -= 1
        if self.down:
            raise MlflowException(
                f"API request to {URI}/api/2.0/mlflow/runs/log-batch failed with exception "
                "HTTPConnectionPool: Max retries exceeded (Connection refused)"
            )
        assert len(metrics) <= BATCH_METRICS
        self.logged += [(m.key, m.value, m.timestamp, m.step) for m in metrics]

    def log_artifact(self, run_id, path, artifact_path=None):
        self.requests += 1
        if self.down:
            raise MlflowException(f"API request to {URI}/api/2.0/mlflow-artifacts/artifacts failed")
        self.logged.append((f"artifact:{artifact_path}", 0.0, 0, -1))


def _tracker(client: FakeClient, clock: Clock, max_outage_s: float = 600.0) -> Tracker:
    return Tracker(URI, "run", max_outage_s=max_outage_s, client=client, clock=clock, sleep=clock.sleep)


def _epoch(step: int) -> dict[str, float]:
    return {"train/loss/total": 1.0 / (step + 1), "val/semseg/miou": 0.1 * step, "lr": 0.002}


def _warnings(caplog) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "pipelines.track.tracker" and r.levelno == logging.WARNING
    ]


def test_metrics_logged_while_the_store_is_down_reach_it_in_order_once_it_is_back(caplog):
    caplog.set_level(logging.WARNING, logger="pipelines.track.tracker")
    clock, client = Clock(), FakeClient()
    tracker = _tracker(client, clock)
    tracker.log_metrics(_epoch(0), step=0)
    client.down = True
    for step in (1, 2):
        clock.now += 40
        tracker.log_metrics(_epoch(step), step=step)  # training goes on: nothing raised
        assert tracker.store_down
    assert [s for *_, s in client.logged] == [0, 0, 0]
    clock.now += 40
    client.down = False
    tracker.log_metrics(_epoch(3), step=3)
    assert not tracker.store_down and tracker.unlogged() == []

    # Every metric exactly once, in the order it was logged, with its own step and value.
    got = [(k, v, s) for k, v, _, s in client.logged]
    want = [(k, v, s) for s in range(4) for k, v in sorted(_epoch(s).items())]
    assert got == want
    # The timestamps are those of the epochs, not of the late request: epoch 1 and 2 keep theirs.
    stamps = {s: ts for _, _, ts, s in client.logged}
    assert stamps[0] <= stamps[1] <= stamps[2] <= stamps[3]
    # One warning when it went away, one when it came back with the count of metrics sent.
    down, back = _warnings(caplog)
    assert "mlflow.example:5000 cannot be reached" in down and "600 s (tracking.max_outage_s)" in down
    assert "reachable again after 80 s: sent 9 buffered metrics" in back
    assert all("s3cr3t" not in w and "alice:***@" in w for w in (down, back))


def test_an_outage_longer_than_the_bound_fails_the_run_without_the_password():
    clock, client = Clock(), FakeClient()
    tracker = _tracker(client, clock, max_outage_s=100)
    client.down = True
    tracker.log_metrics(_epoch(0), step=0)
    clock.now = 99.0
    tracker.log_metrics(_epoch(1), step=1)  # still within the bound
    clock.now = 100.0
    with pytest.raises(TrackingStoreError) as e:
        tracker.log_metrics(_epoch(2), step=2)
    msg = str(e.value)
    assert "unreachable for 100 s (tracking.max_outage_s: 100)" in msg
    assert "9 metrics of step(s) [0, 1, 2] not logged" in msg and "Connection refused" in msg
    assert "s3cr3t" not in msg and "alice:***@mlflow.example" in msg
    assert client.logged == [] and len(tracker.unlogged()) == 9  # nothing sent, nothing dropped


def test_the_bound_counts_from_the_start_of_each_outage():
    clock, client = Clock(), FakeClient()
    tracker = _tracker(client, clock, max_outage_s=100)
    client.down = True
    tracker.log_metrics(_epoch(0), step=0)
    clock.now = 90.0
    client.down = False
    tracker.log_metrics(_epoch(1), step=1)  # back: the first outage lasted 90 s
    client.down = True
    clock.now = 150.0
    tracker.log_metrics(_epoch(2), step=2)  # a second outage starts at 150
    clock.now = 249.0
    tracker.log_metrics(_epoch(3), step=3)  # 99 s into it: still within the bound
    client.down = False
    clock.now = 260.0
    tracker.log_metrics(_epoch(4), step=4)
    assert sorted({s for *_, s in client.logged}) == [0, 1, 2, 3, 4] and len(client.logged) == 15


def test_zero_bound_fails_at_the_first_failed_request():
    clock, client = Clock(), FakeClient()
    client.down = True
    with pytest.raises(TrackingStoreError, match=r"unreachable for 0 s"):
        _tracker(client, clock, max_outage_s=0).log_metrics(_epoch(0), step=0)


def test_the_end_of_run_flush_waits_for_the_store_within_the_bound(caplog):
    caplog.set_level(logging.WARNING, logger="pipelines.track.tracker")
    clock = Clock()
    client = FakeClient(clock)
    tracker = _tracker(client, clock, max_outage_s=100)
    client.down = True
    tracker.log_metrics(_epoch(0), step=0)
    client.up_at = 30.0  # back 30 s into the outage
    tracker.flush(wait=True)
    assert [s for *_, s in client.logged] == [0, 0, 0] and tracker.unlogged() == []
    # Tries 1, 2, 4, 8, 10, 10 s apart: the first try at or after 30 s sends them.
    assert clock.slept == [1, 2, 4, 8, 10, 10] and clock.now == 35
    assert any("waiting up to 100 s more" in w and "3 buffered metrics" in w for w in _warnings(caplog))
    assert "reachable again after 35 s: sent 3 buffered metrics" in _warnings(caplog)[-1]


def test_the_end_of_run_flush_gives_up_when_the_bound_is_spent():
    clock = Clock()
    client = FakeClient(clock)
    tracker = _tracker(client, clock, max_outage_s=45)
    client.down = True
    tracker.log_metrics(_epoch(0), step=0)
    clock.now = 5.0
    with pytest.raises(TrackingStoreError, match=r"unreachable for 45 s .* step\(s\) \[0\] not logged"):
        tracker.flush(wait=True)
    # It never sleeps past the bound: the last wait is cut to end exactly at it, and one try follows.
    assert clock.slept == [1, 2, 4, 8, 10, 10, 5] and clock.now == 45
    assert client.requests == 1 + len(clock.slept) + 1 and client.logged == []


def test_a_request_the_store_refuses_for_its_content_is_raised_at_once():
    clock, client = Clock(), FakeClient()
    tracker = _tracker(client, clock)

    def refuse(run_id, metrics=()):
        raise MlflowException("Invalid metric value", error_code=INVALID_PARAMETER_VALUE)

    client.log_batch = refuse
    with pytest.raises(MlflowException, match="Invalid metric value"):
        tracker.log_metrics(_epoch(0), step=0)
    assert not tracker.store_down


def test_large_batches_are_split_and_a_failure_midway_resends_only_the_rest():
    clock, client = Clock(), FakeClient()
    tracker = _tracker(client, clock)
    many = {f"m/{i:04d}": float(i) for i in range(2500)}
    client.fail_after_chunks = 1  # the store takes the first 1000, then goes away
    tracker.log_metrics(many, step=7)
    assert len(client.logged) == 1000 and len(tracker.unlogged()) == 1500
    client.fail_after_chunks, client.down = None, False
    tracker.flush()
    assert [k for k, *_ in client.logged] == sorted(many)  # each once, in order
    assert {s for *_, s in client.logged} == {7} and client.requests == 2 + 2


def test_unlogged_metrics_survive_a_checkpoint_and_skip_steps_already_stored(caplog):
    clock, client = Clock(), FakeClient()
    tracker = _tracker(client, clock)
    client.down = True
    tracker.log_metrics({"train/loss/total": 0.5, "val/depth/rmse": float("nan")}, step=1)
    tracker.log_metrics({"train/loss/total": 0.4, "val/depth/rmse": 0.3}, step=2)
    saved = json.loads(dumps({"unlogged_metrics": tracker.unlogged()}))["unlogged_metrics"]  # as in meta.json
    assert [e[3] for e in saved] == [1, 1, 2, 2] and saved[1][1] is None  # NaN is null in strict JSON

    # A new process (a retried or resumed worker) with a store that already holds step 1.
    fresh = FakeClient()
    again = _tracker(fresh, Clock())
    caplog.set_level(logging.WARNING, logger="pipelines.track.tracker")
    again.requeue(saved, skip_steps={0, 1})
    assert _warnings(caplog)[-1] == (
        "2 metrics of step(s) [2] that the MLflow tracking store had not taken when the checkpoint was written "
        "are sent now"
    )
    again.log_metrics({"train/loss/total": 0.3}, step=3)
    assert [(k, s) for k, _, _, s in fresh.logged] == [
        ("train/loss/total", 2),
        ("val/depth/rmse", 2),
        ("train/loss/total", 3),
    ]
    assert [ts for _, _, ts, s in fresh.logged if s == 2] == [saved[2][2], saved[3][2]]  # original timestamps
    again.requeue([["val/depth/rmse", None, 5, 4]])
    assert math.isnan(fresh.logged[-1][1]) and fresh.logged[-1][3] == 4


def test_requests_are_tried_briefly_and_the_environment_is_restored(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", raising=False)
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    clock, client = Clock(), FakeClient()
    _tracker(client, clock).log_metrics(_epoch(0), step=0)
    assert client.env_seen == [
        {
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": str(ATTEMPT_TIMEOUT_S),
        }
    ]
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "7"
    assert "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR" not in os.environ and "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "300")  # a user's timeout is kept
    _tracker(client, clock).log_metrics(_epoch(1), step=1)
    assert client.env_seen[-1]["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "300"


def test_a_preview_is_skipped_while_the_store_is_down(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="pipelines.track.tracker")
    png = tmp_path / "epoch_0001.png"
    png.write_bytes(b"png")
    clock, client = Clock(), FakeClient()
    tracker = _tracker(client, clock)
    assert tracker.log_optional_artifact(png, "previews") is True
    client.down = True
    assert tracker.log_optional_artifact(png, "previews") is False  # the upload fails: skipped
    tracker.log_metrics(_epoch(0), step=0)
    requests = client.requests
    assert tracker.log_optional_artifact(png, "previews") is False  # known down: not even tried
    assert client.requests == requests
    assert [k for k, *_ in client.logged] == ["artifact:previews"]
    assert sum("epoch_0001.png not logged" in w for w in _warnings(caplog)) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Unavailable(http.server.BaseHTTPRequestHandler):
    hits = 0

    def do_POST(self):  # noqa: N802 - http.server's name
        type(self).hits += 1
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_mlflow_errors_of_a_store_that_is_down_count_as_an_outage(monkeypatch, caplog):
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    caplog.set_level(logging.WARNING, logger="pipelines.track.tracker")
    # Nothing listens on the port: connection refused, tried twice at once (no minutes of back-off).
    dead = Tracker(f"http://alice:s3cr3t@127.0.0.1:{_free_port()}", "0" * 32, clock=Clock())
    dead.log_metrics(_epoch(0), step=0)
    assert dead.store_down and len(dead.unlogged()) == 3
    (down,) = _warnings(caplog)
    assert "cannot be reached (MlflowException: API request to http://alice:***@127.0.0.1:" in down
    assert "s3cr3t" not in down
    assert not [r for r in caplog.records if r.name.startswith("urllib3")]  # the tracker's warning says it

    # A server that answers 503: MLflow's client makes 1 + ATTEMPT_ENV's retries requests, then the
    # tracker buffers.
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_port}"
    try:
        busy = Tracker(uri, "0" * 32, clock=Clock())
        busy.log_metrics(_epoch(0), step=0)
        assert busy.store_down and _Unavailable.hits == 1 + int(ATTEMPT_ENV["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        with pytest.raises(MlflowException) as e:  # the error MLflow raises, as the tracker sees it
            MlflowClient(uri).log_batch("0" * 32, metrics=[Metric("m", 1.0, 0, 0)])
    finally:
        server.shutdown()
        server.server_close()
    assert is_transient(e.value)
    assert not is_transient(MlflowException("no such run", error_code=RESOURCE_DOES_NOT_EXIST))
    assert not is_transient(ValueError("not the store"))


def test_sending_a_batch_again_that_the_store_already_took_adds_nothing(tmp_path):
    # A request whose answer was lost reached the store: the tracker sends the same metrics (same key,
    # value, step and timestamp) again, and the SQL store keeps one of each.
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("outage")).info.run_id
    tracker = Tracker(uri, run_id)
    tracker.log_metrics(_epoch(0), step=0)
    tracker.requeue([[m.key, m.value, m.timestamp, m.step] for m in _history(client, run_id)])  # all again
    tracker.log_metrics(_epoch(1), step=1)
    assert sorted((m.key, m.step) for m in _history(client, run_id)) == sorted(
        (k, s) for s in (0, 1) for k in _epoch(s)
    )


def _history(client, run_id):
    return [m for k in client.get_run(run_id).data.metrics for m in client.get_metric_history(run_id, k)]
