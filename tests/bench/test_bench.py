"""The benchmark command runs end to end (tiny durations: this checks it works, it measures nothing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.__main__ import contract_summary, main, table
from bench.load import multipart

pytestmark = pytest.mark.e2e


def test_multipart_body_carries_each_file_in_the_file_field():
    body, ctype = multipart([("a.png", b"AAA"), ("b.png", b"BBB")])
    boundary = ctype.split("boundary=")[1]
    assert body.count(f"--{boundary}\r\n".encode()) == 2
    assert body.endswith(f"--{boundary}--\r\n".encode())
    assert b'name="file"; filename="b.png"' in body and b"\r\n\r\nBBB\r\n" in body


@pytest.mark.long(80)
def test_bench_runs_every_scenario_and_reports_them(tmp_path: Path):
    out = tmp_path / "bench.json"
    # Short, but long enough that every scenario finishes something while other test processes load the cores
    # (with 1 s and 0.5 s, a first call's graph compile under load left a window empty).
    assert main(["--seconds", "2", "--warmup", "2", "--clients", "4", "--batch-clients", "2",
                 "--images", "64", "--photos", "16", "--json", str(out)]) == 0

    results = json.loads(out.read_text())
    flower, no_flower, seed = results["flower"], results["no_flower"], results["seed"]
    scenarios = [flower["one_request"], flower["long_poll"], flower["photos"], flower["batch"],
                 no_flower["one_request"], seed["mnist"], seed["photos"]]
    for scenario in scenarios:
        assert scenario["images_per_s"] > 0
        assert scenario["errors"] == 0 and scenario["failures"] == 0
    for scenario in scenarios[:-1]:  # the seed design misreads photos: that is what it is there to show
        assert 0.5 < scenario["accuracy"] <= 1.0
    # Every process of the stack is accounted for, and the worker and web report their peaks.
    assert {"web", "worker", "flower"} <= set(flower["one_request"]["cpu_ms_per_prediction"])
    assert "flower" not in no_flower["one_request"]["cpu_ms_per_prediction"]
    assert flower["worker_rss_mb"] > 0 and flower["web_rss_mb"] > 0 and flower["worker_ready_s"] > 0


def test_the_contract_summary_sets_each_kind_against_plain_uploads_and_their_spread():
    rates = {"plain_1": 400, "keyed_1": 410, "webhook_1": 380, "plain_2": 440, "keyed_2": 430, "webhook_2": 400}
    results = {name: {"images_per_s": rate} for name, rate in rates.items()} | {"webhooks_received": 9}

    rows = contract_summary(results)

    assert rows[2:5] == ["| plain | 2 | 420 | 420 | 400 | 440 | +0.0% | +0.0% |",
                         "| keyed | 2 | 420 | 420 | 410 | 430 | +0.0% | +0.0% |",
                         "| webhook | 2 | 390 | 390 | 380 | 400 | -7.1% | -7.1% |"]
    assert rows[-1] == "\nnoise: plain uploads' own rounds span 9.5% of their mean"


def test_the_table_sets_the_peer_beside_the_pipeline_in_the_same_run():
    one = {"images_per_s": 400.0, "p50_ms": 38, "p99_ms": 60, "errors": 0, "failures": 0, "accuracy": 0.985}
    results = {"flower": {"one_request": one},
               "peer": {"mnist": one | {"images_per_s": 500.0, "accuracy": 0.93}},
               "seed": {"mnist": one | {"images_per_s": 20.0}}}

    text = table(results)

    assert "| BentoML peer, two services, sync /predict | 500 | 25.0x |" in text
    assert text.endswith("pipeline one request against the BentoML peer, same run: 0.80x")
