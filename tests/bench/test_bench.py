"""The benchmark command runs end to end (tiny durations: this checks it works, it measures nothing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.__main__ import main
from bench.load import multipart

pytestmark = pytest.mark.e2e


def test_multipart_body_carries_each_file_in_the_file_field():
    body, ctype = multipart([("a.png", b"AAA"), ("b.png", b"BBB")])
    boundary = ctype.split("boundary=")[1]
    assert body.count(f"--{boundary}\r\n".encode()) == 2
    assert body.endswith(f"--{boundary}--\r\n".encode())
    assert b'name="file"; filename="b.png"' in body and b"\r\n\r\nBBB\r\n" in body


def test_bench_runs_every_scenario_and_reports_them(tmp_path: Path):
    out = tmp_path / "bench.json"
    assert main(["--seconds", "1", "--warmup", "0.5", "--clients", "4", "--batch-clients", "2",
                 "--images", "64", "--json", str(out)]) == 0

    results = json.loads(out.read_text())
    for scenario in (results["pipeline"]["single"], results["pipeline"]["batch"], results["seed"]["single"]):
        assert scenario["images_per_s"] > 0
        assert scenario["errors"] == 0 and scenario["failures"] == 0
        assert 0.5 < scenario["accuracy"] <= 1.0
    assert results["pipeline"]["worker_rss_mb"] > 0 and results["pipeline"]["web_ready_s"] > 0
    assert results["speedup"] > 0
