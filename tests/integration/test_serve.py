"""``python -m experiments.serve`` (what ``scripts/serve`` runs), as a researcher or a script uses it.

Its contract: the engine's log goes to stderr and stdout carries exactly one
line, the base_url, once GET /models answers; ``--api-key-env`` makes the
server require the key without putting it on any command line; SIGTERM (or
Ctrl-C) stops the engine, frees the port and exits with 128 + the signal.
Each engine starts in seconds with the embedded SmolLM2 (llama-server is
built once and cached; where it cannot be, its case skips).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from experiments.servers.cached_setup import EngineUnavailable
from experiments.servers.engines import SERVED_NAME, ServeOptions, prepare
from experiments.servers.process import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
KEY = "sk-serve-TEST-789"


def serve(*args: str, env: dict[str, str] | None = None, stderr=subprocess.PIPE) -> subprocess.Popen:
    # A session of its own, as a terminal would give it: the test can clean up the whole group if it must.
    return subprocess.Popen([sys.executable, "-m", "experiments.serve", *args], cwd=REPO,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, stdout=subprocess.PIPE,
                            stderr=stderr, text=True, start_new_session=True)


def get_models(base_url: str, key: str | None) -> int:
    request = urllib.request.Request(f"{base_url}/models")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            assert SERVED_NAME in response.read().decode()
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def children(pid: int) -> list[int]:
    """The processes ``pid`` started, and theirs (from each process's parent in /proc/PID/stat)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"  # a zombie has exited
    except OSError:
        return False


def can_listen(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT does not count
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            return False
    return True


def engine_or_skip(engine: str) -> None:
    try:
        prepare(ServeOptions(engine))  # cached after the first time
    except EngineUnavailable as error:
        pytest.skip(f"{engine} cannot run on this machine: {error}")


@pytest.mark.parametrize("engine", ["llama-cpp-python", "llama-server"])
def test_serve_prints_only_the_base_url_requires_its_key_and_stops_on_sigterm(engine, tmp_path):
    engine_or_skip(engine)
    log = tmp_path / "serve.stderr"
    with open(log, "w") as stderr:
        process = serve(engine, "--port", "0", "--api-key-env", "SERVE_TEST_KEY", env={"SERVE_TEST_KEY": KEY},
                        stderr=stderr)
    try:
        line = process.stdout.readline()  # blocks until the server answers, or serve exits
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1\n", line), (line, log.read_text()[-3000:])
        base_url = line.strip()
        port = int(base_url.rsplit(":", 1)[1].split("/")[0])
        assert get_models(base_url, KEY) == 200
        assert get_models(base_url, None) == 401 and get_models(base_url, "sk-wrong") == 401
        engine_pids = children(process.pid)
        assert engine_pids and all(alive(pid) for pid in engine_pids)
        for pid in [process.pid, *engine_pids]:  # the key travels in the environment, never on a command line
            assert KEY not in Path(f"/proc/{pid}/cmdline").read_text()

        started = time.monotonic()
        process.send_signal(signal.SIGTERM)  # to serve alone: it must stop its engine itself
        rest, _ = process.communicate(timeout=60)
        stopped_in = time.monotonic() - started
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    stderr = log.read_text()
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert rest == ""  # one line on stdout, nothing after it
    assert stopped_in < 15, f"serve took {stopped_in:.1f} s to stop"
    assert not any(alive(pid) for pid in engine_pids)
    assert can_listen(port)
    assert f"backend.base_url={base_url}" in stderr and KEY not in stderr


def test_serve_refuses_a_key_variable_that_is_not_set_before_starting_anything():
    env = {name: value for name, value in os.environ.items() if name != "SERVE_TEST_UNSET"}
    result = subprocess.run([sys.executable, "-m", "experiments.serve", "llama-cpp-python", "--port",
                             str(free_port()), "--api-key-env", "SERVE_TEST_UNSET"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert "--api-key-env SERVE_TEST_UNSET: that environment variable is not set" in result.stderr
    assert "starting" not in result.stderr
