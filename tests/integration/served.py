"""Shared by the tests that run a sweep against an engine started with ``python -m experiments.serve``.

The server runs as ``scripts/serve`` runs it (``experiments.serve``, which
sets the engine up once and caches it), in a session of its own so that a
SIGKILL reaches the engine's own child processes too; a restart uses the
same port. The generate stage runs as a researcher runs it, in a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, Optional

import pytest

from experiments.servers.cached_setup import EngineUnavailable
from experiments.servers.engines import SERVED_NAME, ServeOptions, prepare
from experiments.servers.process import ServerProcess, free_port
from experiments.store import read_stories

REPO = Path(__file__).resolve().parents[2]


class ServedEngine(ServerProcess):
    """``python -m experiments.serve ENGINE --port N ...``, restartable on the same port."""

    def __init__(self, engine: str, log_path: Path, *serve_args: str):
        self.engine = engine
        self.port = free_port()
        url = f"http://127.0.0.1:{self.port}/v1"
        argv = [sys.executable, "-m", "experiments.serve", engine, "--port", str(self.port), *serve_args]
        super().__init__(argv, url, env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
                         log_path=log_path, name=f"scripts/serve {engine}")
        self.url = url

    def ensure_running(self, timeout: float) -> None:
        if not self.running():
            self.start(timeout)


def set_up_or_skip(engine: str) -> float:
    """Set the engine up (cached after the first time); its start-up timeout. Skips where it cannot run."""
    try:
        return prepare(ServeOptions(engine)).ready_timeout_s
    except EngineUnavailable as error:
        pytest.skip(f"{engine} cannot run on this machine: {error}")


def serving(engine: str, tmp_path_factory, *serve_args: str) -> Iterator[ServedEngine]:
    """A module fixture's body: set the engine up (or skip), start it, yield it, stop it.

    ``server.timeout`` is the engine's start-up timeout, for restarts.
    """
    timeout = set_up_or_skip(engine)
    server = ServedEngine(engine, tmp_path_factory.mktemp(engine) / "server.log", *serve_args)
    server.timeout = timeout
    server.start(timeout)
    try:
        yield server
    finally:
        server.stop()


def generate_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "experiments.generate", *args, "progress=false"]


def generate_env() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}, "HF_HUB_OFFLINE": "1"}


def run_generate(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(generate_command(*args), cwd=REPO, env=generate_env(), capture_output=True, text=True,
                          timeout=timeout)


def start_generate(args: list[str], log_path: Path) -> subprocess.Popen:
    with open(log_path, "wb") as log:
        return subprocess.Popen(generate_command(*args), cwd=REPO, env=generate_env(), stdout=subprocess.DEVNULL,
                                stderr=log)


def backend_args(server: ServedEngine, profile: str, out: Path, *more: str) -> list[str]:
    return ["backend=openai", f"backend.profile={profile}", f"backend.base_url={server.url}",
            f"backend.model={SERVED_NAME}", f"out_dir={out}", *more]


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr[-4000:]


def stories_of(out: Path) -> list[dict]:
    return sorted(read_stories(out / "stories.jsonl"), key=lambda story: story["sample_index"])


def texts(out: Path) -> list[str]:
    return [story["text"] for story in stories_of(out)]


def assert_all_stories_once(out: Path, count: int) -> list[dict]:
    stories = stories_of(out)
    ids = [story["story_id"] for story in stories]
    assert len(ids) == count and len(set(ids)) == count, f"{len(ids)} stories, {len(set(ids))} distinct"
    return stories


def wait_for_lines(path: Path, count: int, process: subprocess.Popen, timeout: float = 300) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if path.exists() and path.read_bytes().count(b"\n") >= count:
            break
        time.sleep(0.05)
    return path.read_bytes().count(b"\n") if path.exists() else 0


def restart_later(server: ServedEngine, delay_s: float, timeout: float) -> threading.Thread:
    """Start the server again on its port after ``delay_s``, in a thread (join it before asserting)."""
    errors: list[BaseException] = []

    def restart():
        time.sleep(delay_s)
        try:
            server.start(timeout)
        except BaseException as error:  # noqa: BLE001 - re-raised by the test through .errors
            errors.append(error)

    thread = threading.Thread(target=restart, daemon=True)
    thread.errors = errors
    thread.start()
    return thread


def finish(process: subprocess.Popen, restart: Optional[threading.Thread], timeout: float = 900) -> None:
    try:
        process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
        if restart is not None:
            restart.join()
            assert not restart.errors, restart.errors
