"""Wait for a server that went away (a restart, a crash, a model still loading) to come back.

A request that finds its server unreachable would otherwise spend its own
retry budget (seconds to a minute of backoff) on a server that takes minutes
to restart, and every request in flight would do the same at once. Instead
the first thread to find it unreachable polls a cheap probe (GET /models)
until the server answers or ``wait_s`` has passed; the other threads join
that same wait rather than probing, or burning retries, on their own.

The probe decides what the failure meant:

* it answers at once: the server is up and the failure was the request's own
  (a dropped keep-alive connection, an overloaded server's 503): ``UP``, an
  ordinary retry;
* it fails, then answers before the deadline: ``BACK``, send the request
  again, not counted as a retry;
* it never answers: ``GAVE_UP``, and every later wait gives up at once
  until ``reset()`` (the backend calls it once it has seen the server back),
  so a run whose server stayed down waits once, not once per story;
* the run's stop event is set: ``STOPPED``.
"""

from __future__ import annotations

import logging
import threading
import time
from enum import Enum
from typing import Callable, Optional

# The backend's own logger: one name for all of its lines.
log = logging.getLogger("experiments.backends.openai_backend")

# How often a thread that joined another's wait checks its stop event.
STOP_CHECK_S = 0.2


class Outcome(Enum):
    UP = "up"  # answered the first probe: the server was never down
    BACK = "back"  # was down, answers again
    GAVE_UP = "gave up"  # still down at the deadline
    STOPPED = "stopped"  # the run stopped while waiting


class _Wait:
    """One wait in progress, shared by every thread that finds the server unreachable during it."""

    def __init__(self):
        self.done = threading.Event()
        self.outcome: Optional[Outcome] = None

    def finish(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self.done.set()

    def join(self, stop: threading.Event) -> Outcome:
        while not self.done.wait(STOP_CHECK_S):
            if stop.is_set():
                return Outcome.STOPPED
        return self.outcome


class ServerWaiter:
    """One per backend; its threads share it.

    ``probe()`` returns whether the server answers (it must not raise for a
    server that is down); ``where`` starts every log line; ``setting`` names
    the config field that sets ``wait_s``. The callers of one wait share the
    run's stop event (one generate() runs at a time), so a thread that
    joined a wait stops when the thread polling for it does.
    """

    def __init__(self, probe: Callable[[], bool], wait_s: float, poll_s: float, where: str,
                 setting: str = "backend.server_wait_s", clock: Callable[[], float] = time.monotonic):
        self.probe = probe
        self.wait_s = wait_s
        self.poll_s = poll_s
        self.where = where
        self.setting = setting
        self._clock = clock
        self._lock = threading.Lock()
        self._current: Optional[_Wait] = None
        self._gave_up = False

    @property
    def gave_up_text(self) -> str:
        """What a request that gave up says about the wait."""
        return f"still unreachable after waiting {self.wait_s:g} s ({self.setting})"

    def wait(self, reason: str, stop: threading.Event) -> Outcome:
        """Block until the server answers, the deadline passes or ``stop`` is set; ``reason`` is why it looked down."""
        with self._lock:
            if self._gave_up:
                return Outcome.GAVE_UP
            current, leading = self._current, self._current is None
            if leading:
                current = self._current = _Wait()
        if not leading:
            return current.join(stop)
        outcome = Outcome.STOPPED
        try:
            outcome = self._poll(reason, stop)
        finally:  # even if the probe raised (a bug): never leave the others waiting on a wait nobody polls
            with self._lock:
                self._current = None
                self._gave_up = outcome is Outcome.GAVE_UP
            current.finish(outcome)
        return outcome

    def reset(self) -> None:
        """The server answers again (seen by the caller): the next failure waits again."""
        with self._lock:
            self._gave_up = False

    def _poll(self, reason: str, stop: threading.Event) -> Outcome:
        started = self._clock()
        if self.probe():
            return Outcome.UP
        log.warning("%s is unreachable (%s); waiting up to %g s for it to come back (%s)", self.where, reason,
                    self.wait_s, self.setting)
        deadline = started + self.wait_s
        while (remaining := deadline - self._clock()) > 0:
            if stop.wait(min(self.poll_s, remaining)):
                return Outcome.STOPPED
            if self.probe():
                log.warning("%s answers again after %.1f s; resuming", self.where, self._clock() - started)
                return Outcome.BACK
        log.warning("%s is %s; giving up", self.where, self.gave_up_text)
        return Outcome.GAVE_UP
