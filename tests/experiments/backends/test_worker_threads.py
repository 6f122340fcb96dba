"""experiments/backends/worker_threads.py: bounded concurrency, results as they finish, stopping without waiting."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from experiments.backends.worker_threads import map_as_completed

REPO = Path(__file__).resolve().parents[3]


def test_results_arrive_in_the_order_they_finish():
    def call(delay, stop):
        time.sleep(delay)
        return delay

    assert list(map_as_completed(call, [0.4, 0.0, 0.2], max_workers=3)) == [0.0, 0.2, 0.4]


def test_at_most_max_workers_calls_run_at_once():
    lock, running, peak = threading.Lock(), [0], [0]

    def call(item, stop):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return item

    assert sorted(map_as_completed(call, list(range(12)), max_workers=3)) == list(range(12))
    assert peak[0] == 3
    peak[0] = 0
    assert sorted(map_as_completed(call, [1, 2], max_workers=8)) == [1, 2] and peak[0] <= 2


def test_no_items_no_threads():
    assert list(map_as_completed(lambda item, stop: item, [], max_workers=4)) == []


def test_the_first_error_is_raised_to_the_consumer_and_no_call_starts_after_it():
    started = []

    def call(item, stop):
        started.append(item)
        if item == 2:
            raise ValueError("story 2")
        return item

    results = []
    with pytest.raises(ValueError, match="story 2"):
        for result in map_as_completed(call, list(range(10)), max_workers=1):
            results.append(result)
    time.sleep(0.1)
    assert results == [0, 1] and started == [0, 1, 2]


def test_closing_the_consumer_sets_stop_for_the_calls_still_running():
    stopped = threading.Event()

    def call(item, stop):
        if item == 0:
            return item
        if stop.wait(10):  # a retry's wait, cut short
            stopped.set()
        return item

    results = map_as_completed(call, [0, 1], max_workers=2)
    assert next(results) == 0
    results.close()
    assert stopped.wait(5)


def test_calls_still_running_when_the_consumer_stops_do_not_hold_up_the_exit():
    # A refusal with a long story in flight: the process ends now, not when that story's answer comes.
    script = textwrap.dedent("""
        import time
        from experiments.backends.worker_threads import map_as_completed

        def call(item, stop):
            if item == "refused":
                time.sleep(0.2)
                raise RuntimeError("refused")
            time.sleep(60)

        try:
            list(map_as_completed(call, ["long story", "refused"], max_workers=2))
        except RuntimeError:
            print("stopped")
    """)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=50)
    assert result.returncode == 0 and result.stdout.strip() == "stopped", result.stderr[-2000:]
    assert time.monotonic() - started < 30
