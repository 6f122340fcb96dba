"""Run a blocking call on many items with bounded concurrency; yield each result as it finishes.

Daemon threads rather than ``concurrent.futures.ThreadPoolExecutor``: the
executor's threads are joined when the interpreter exits, so a run stopped
by an error or by Ctrl-C would sit until every request in flight had its
answer (minutes for a long story on a busy server; the openai client cannot
abort a request from another thread). Daemon threads end with the process.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterator, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def map_as_completed(call: Callable[[T, threading.Event], R], items: Sequence[T],
                     max_workers: int) -> Iterator[R]:
    """``call(item, stop)`` for every item, at most ``max_workers`` at once; results in the order they finish.

    The first exception a call raises is raised here, in the consuming
    thread. ``stop`` is set as soon as a call raises or the consumer stops
    reading (an exception of its own, or the generator closed): no call starts
    after it, and a call should cut its waits short when it is set. Calls
    still running then are abandoned, not waited for.
    """
    work: queue.SimpleQueue[T] = queue.SimpleQueue()
    for item in items:
        work.put(item)
    results: queue.SimpleQueue[tuple[bool, object]] = queue.SimpleQueue()
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            try:
                item = work.get_nowait()
            except queue.Empty:
                return
            try:
                results.put((True, call(item, stop)))
            except BaseException as error:  # noqa: BLE001 - handed to the consuming thread, which raises it
                stop.set()  # before the consumer wakes: no other item starts
                results.put((False, error))

    for _ in range(min(max_workers, len(items))):
        threading.Thread(target=worker, daemon=True).start()
    try:
        for _ in items:
            ok, outcome = results.get()
            if not ok:
                raise outcome
            yield outcome
    finally:
        stop.set()
