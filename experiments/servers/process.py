"""A server process on a loopback port: started, waited for until it answers, killed, restarted.

The server runs in a process group of its own, so a stop or a SIGKILL
reaches the processes it forks (vLLM runs its engine in a child process),
and on Linux a server started from the main thread is told to die with its
parent (PR_SET_PDEATHSIG), so a killed ``scripts/serve`` leaves no server
behind holding the port. Only from the main thread: the signal is sent when
the *thread* that forked the child ends, so a server (re)started from a
worker thread would be killed the moment that thread finished.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Optional, Sequence

PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def answers(base_url: str, api_key: Optional[str] = None, timeout: float = 2.0) -> bool:
    """Whether GET <base_url>/models answers 200 (what a client checks before its first request)."""
    request = urllib.request.Request(f"{base_url}/models")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status == 200
    except OSError:  # refused, reset, timed out, or an HTTP error status (503 while loading)
        return False


class ServerFailed(RuntimeError):
    """The server exited, or did not answer in time; the message carries the end of its log."""


class ServerProcess:
    """One server command, restartable on the same port."""

    def __init__(self, argv: Sequence[str], base_url: str, env: Optional[dict[str, str]] = None,
                 log_path: Optional[Path] = None, api_key: Optional[str] = None, name: str = "server",
                 new_session: bool = True):
        self.argv = list(argv)
        self.base_url = base_url
        self.env = env
        self.log_path = log_path
        self.api_key = api_key
        self.name = name
        self.new_session = new_session  # False: stay in the caller's group (a terminal's Ctrl-C reaches it)
        self.process: Optional[subprocess.Popen] = None

    def start(self, timeout: float) -> "ServerProcess":
        """Start the command and return once GET /models answers; ServerFailed if it exits or times out."""
        main_thread = threading.current_thread() is threading.main_thread()
        out = open(self.log_path, "ab") if self.log_path else None
        try:
            # Without a log file the server's output goes to our stderr: stdout is kept for what we print.
            self.process = subprocess.Popen(self.argv, env=self.env, stdout=out or sys.stderr.fileno(),
                                            stderr=subprocess.STDOUT, start_new_session=self.new_session,
                                            preexec_fn=_die_with_parent if main_thread else None)
        finally:
            if out:
                out.close()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerFailed(f"{self.name} exited with status {self.process.returncode} before answering"
                                   + self._log_tail())
            if answers(self.base_url, self.api_key):
                return
            time.sleep(0.5)
        self.stop()
        raise ServerFailed(f"{self.name} did not answer GET {self.base_url}/models within {timeout:.0f} s"
                           + self._log_tail())

    def _log_tail(self, lines: int = 30) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return f"; the last lines of {self.log_path}:\n" + "\n".join(tail)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _signal(self, sig: int) -> None:
        try:
            if self.new_session:
                os.killpg(self.process.pid, sig)
            else:
                self.process.send_signal(sig)
        except ProcessLookupError:
            pass

    def terminate(self) -> None:
        """SIGTERM, without waiting for the exit: safe in a signal handler that interrupted a wait on the process
        (``Popen.wait`` holds a lock that a second wait in the same thread would block on for ever)."""
        if self.running():
            self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL to the whole group: requests in flight lose their connection mid-answer."""
        if self.process is None:
            return
        self._signal(signal.SIGKILL)
        self.process.wait()

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM, then SIGKILL if the server has not exited after ``grace_s``.

        With a session of its own, the group is then SIGKILLed whether or not
        the leader was still running: children that outlived it (vLLM's engine
        core, after its API server died) would otherwise keep gigabytes and
        cores busy.
        """
        if self.process is None:
            return
        if self.running():
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.new_session:
            self._signal(signal.SIGKILL)

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
