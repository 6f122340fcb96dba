"""experiments/backends/server_waiter.py: waiting for a server to come back, one wait shared by all threads.

The probe is a fake (a list of answers); a fake clock advances when the
waiter waits on the stop event, so nothing sleeps but the test of many
threads, which uses real time in hundredths of a second.
"""

from __future__ import annotations

import logging
import threading
import time

import pytest

from experiments.backends.server_waiter import Outcome, ServerWaiter

WHERE = "server http://127.0.0.1:9/v1 (profile vllm, model 'm')"


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class ClockedStop(threading.Event):
    """A stop event whose waits move the fake clock on instead of sleeping; set after ``set_after`` waits."""

    def __init__(self, clock: Clock, set_after: int | None = None):
        super().__init__()
        self.clock, self.set_after, self.waits = clock, set_after, []

    def wait(self, timeout=None):
        self.waits.append(timeout)
        self.clock.now += timeout
        if self.set_after is not None and len(self.waits) >= self.set_after:
            self.set()
        return self.is_set()


def probe(*answers: bool):
    """A probe giving each answer in turn (then the last one forever), counting its calls."""
    answers = list(answers)

    def answer() -> bool:
        answer.calls += 1
        return answers.pop(0) if len(answers) > 1 else answers[0]

    answer.calls = 0
    return answer


def waiter(answers, wait_s=10.0, poll_s=2.0, clock=None) -> ServerWaiter:
    return ServerWaiter(answers, wait_s, poll_s, WHERE, clock=clock or Clock())


def test_a_server_that_answers_the_first_probe_was_not_down_and_nothing_is_logged(caplog):
    answers = probe(True)
    with caplog.at_level(logging.INFO):
        assert waiter(answers).wait("HTTP 503", threading.Event()) is Outcome.UP
    assert answers.calls == 1 and caplog.records == []


def test_it_polls_until_the_server_answers_and_says_when_it_started_and_ended(caplog):
    clock = Clock()
    answers, stop = probe(False, False, False, True), ClockedStop(clock)
    with caplog.at_level(logging.INFO):
        assert waiter(answers, clock=clock).wait("APIConnectionError: Connection error.", stop) is Outcome.BACK
    assert answers.calls == 4 and stop.waits == [2.0, 2.0, 2.0]
    assert [record.getMessage() for record in caplog.records] == [
        f"{WHERE} is unreachable (APIConnectionError: Connection error.); waiting up to 10 s for it to come back "
        "(backend.server_wait_s)",
        f"{WHERE} answers again after 6.0 s; resuming"]
    assert {record.name for record in caplog.records} == {"experiments.backends.openai_backend"}


def test_it_gives_up_at_the_deadline_probing_one_last_time_there(caplog):
    clock = Clock()
    answers, stop = probe(False), ClockedStop(clock)
    with caplog.at_level(logging.WARNING):
        assert waiter(answers, wait_s=5.0, clock=clock).wait("HTTP 502", stop) is Outcome.GAVE_UP
    assert stop.waits == [2.0, 2.0, 1.0] and answers.calls == 4 and clock.now == 105.0
    assert caplog.records[-1].getMessage() == \
        f"{WHERE} is still unreachable after waiting 5 s (backend.server_wait_s); giving up"


def test_after_giving_up_every_wait_gives_up_at_once_until_reset():
    clock = Clock()
    answers = probe(False)
    down = waiter(answers, wait_s=4.0, clock=clock)
    assert down.wait("refused", ClockedStop(clock)) is Outcome.GAVE_UP
    calls = answers.calls
    stop = ClockedStop(clock)
    assert down.wait("refused", stop) is Outcome.GAVE_UP and answers.calls == calls and stop.waits == []
    down.reset()
    assert down.wait("refused", ClockedStop(clock)) is Outcome.GAVE_UP and answers.calls > calls


def test_the_stop_event_ends_the_wait():
    clock = Clock()
    answers, stop = probe(False), ClockedStop(clock, set_after=2)
    shared = waiter(answers, wait_s=300.0, clock=clock)
    assert shared.wait("refused", stop) is Outcome.STOPPED
    assert stop.waits == [2.0, 2.0] and answers.calls == 2  # no probe after the stop
    assert shared.wait("refused", ClockedStop(clock, set_after=1)) is Outcome.STOPPED  # not a give-up: waits again


def test_many_threads_share_one_wait_and_only_one_probes():
    state = {"up": False, "probers": set()}
    lock = threading.Lock()

    def answers() -> bool:
        with lock:
            state["probers"].add(threading.get_ident())
            return state["up"]

    shared = ServerWaiter(answers, wait_s=30.0, poll_s=0.02, where=WHERE)
    stop, outcomes = threading.Event(), []
    threads = [threading.Thread(target=lambda: outcomes.append(shared.wait("refused", stop))) for _ in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    with lock:
        state["up"] = True
    for thread in threads:
        thread.join(timeout=5)
    assert outcomes == [Outcome.BACK] * 8
    assert len(state["probers"]) == 1  # one thread polled for all eight


def test_threads_that_joined_a_wait_stop_with_the_run():
    shared = ServerWaiter(lambda: False, wait_s=30.0, poll_s=0.02, where=WHERE)
    stop, outcomes = threading.Event(), []
    threads = [threading.Thread(target=lambda: outcomes.append(shared.wait("refused", stop))) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.1)
    started = time.monotonic()
    stop.set()
    for thread in threads:
        thread.join(timeout=5)
    assert outcomes == [Outcome.STOPPED] * 3 and time.monotonic() - started < 1


def test_a_probe_that_raises_leaves_no_thread_waiting_forever():
    def broken() -> bool:
        raise RuntimeError("a bug in the probe")

    shared = ServerWaiter(broken, wait_s=30.0, poll_s=0.02, where=WHERE)
    with pytest.raises(RuntimeError):
        shared.wait("refused", threading.Event())
    assert shared._current is None  # the next wait starts afresh
