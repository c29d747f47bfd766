"""The soak command's pure parts: the plateau rule, the table, the process labels (no stack is started)."""

from __future__ import annotations

import pytest

from bench.soak import clock, format_table, plateaued, row_order, verdict
from bench.stack import role_of


def test_a_steadily_growing_series_has_not_plateaued():
    assert not plateaued([100, 110, 120, 130, 140, 150])
    # A slow leak in a big process: 1 MB a sample on 600 MB is still growth once it passes 5%.
    assert not plateaued([600 + 6 * i for i in range(21)])


def test_a_flat_series_with_noise_has_plateaued():
    assert plateaued([200.0, 203.1, 199.4, 202.2, 201.0, 203.9])
    assert plateaued([80.0, 80.0, 80.0, 80.0])


def test_a_series_that_fills_up_to_a_bound_then_levels_off_has_plateaued():
    # Flower filling up to max_tasks, Redis up to the status TTL: the rise is in the first third.
    assert plateaued([68, 78, 86, 95, 106, 114, 124, 132, 139, 146, 148, 148, 152, 153, 153, 154, 154, 156, 156, 155])
    assert plateaued([100, 180, 240, 241, 239, 242, 240, 241, 240])


def test_a_series_still_falling_has_plateaued():
    assert plateaued([300, 280, 250, 240])


def test_growth_must_stay_within_the_larger_of_five_percent_and_two_mb():
    assert plateaued([20] * 6 + [21.9] * 3)  # 1.9 MB, though 9.5%
    assert not plateaued([20] * 6 + [22.5] * 3)  # 2.5 MB and 12.5%
    assert plateaued([400] * 6 + [419] * 3)  # 19 MB, but 4.75%
    assert not plateaued([400] * 6 + [424] * 3)  # 6%


def test_the_first_third_is_the_fill_up_and_does_not_count():
    assert plateaued([10, 500, 100, 101, 100, 101])  # a start-up spike
    assert not plateaued([10, 10, 100, 100, 130, 130])  # but growth from the middle to the end counts


def test_a_plateau_needs_three_samples():
    with pytest.raises(ValueError):
        plateaued([100, 100])


def test_verdict_skips_gaps_and_says_when_it_cannot_tell():
    assert verdict([None, 100, 100, 100]) == "yes"
    assert verdict([None, 100, 150, 200]) == "NO"
    assert verdict([None, None, 100, 100]) == "?"


def test_clock_writes_minutes_and_seconds():
    assert [clock(t) for t in (0, 15, 59.6, 90, 600.2)] == ["0:00", "0:15", "1:00", "1:30", "10:00"]


def test_table_has_a_column_per_sample_and_a_row_per_series():
    table = format_table([0, 30, 60.4, 90], {
        "web master": [50.04, 50.1, 50.2, 50.2],
        "web worker 1": [None, 120.0, 150.0, 180.55],
        "redis used_memory": [1.0, 1.44, 1.5],
    })
    lines = table.splitlines()
    assert lines[0] == "| MB | 0:00 | 0:30 | 1:00 | 1:30 | plateau |"
    assert lines[1] == "|---|---:|---:|---:|---:|---|"
    assert lines[2] == "| web master | 50.0 | 50.1 | 50.2 | 50.2 | yes |"
    assert lines[3] == "| web worker 1 | - | 120.0 | 150.0 | 180.6 | NO |"
    assert lines[4] == "| redis used_memory | 1.0 | 1.4 | 1.5 | - | yes |"
    assert len({line.count("|") for line in lines}) == 1  # every row has every column


def test_processes_are_labelled_by_role_from_their_command_lines():
    launcher = ["/v/bin/python", "-m", "scripts.run_local"]
    master = ["/v/bin/python", "-m", "gunicorn", "-c", "python:gunicorn_conf", "web:create_app()"]
    celery = ["/v/bin/python", "-m", "celery", "-A", "worker.celery_app", "worker"]
    assert role_of(launcher, ["bash"]) == "launcher"
    assert role_of(master, launcher) == "web master"
    assert role_of(master, master) == "web worker"
    assert role_of(["gunicorn: worker [web:create_app()]"], ["gunicorn: master [web:create_app()]"]) == "web worker"
    assert role_of(celery, launcher) == "worker"
    assert role_of(celery, celery) == "worker child"
    assert role_of(["/v/bin/python", "-m", "worker.flower", "--port=5555"], launcher) == "flower"
    assert role_of(["/usr/bin/redis-server", "--port", "4242"], launcher) == "redis-server"


def test_rows_go_in_role_order_with_numbered_processes_in_number_order():
    names = ["redis used_memory", "flower", "web worker 10", "worker", "web worker 2", "launcher", "web master"]
    assert sorted(names, key=row_order) == ["launcher", "web master", "web worker 2", "web worker 10", "worker",
                                            "flower", "redis used_memory"]
