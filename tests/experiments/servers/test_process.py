"""ServerProcess with a real (tiny) server: python's http.server answering GET /v1/models from a folder."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from experiments.servers.process import ServerFailed, ServerProcess, answers, free_port


def models_server(tmp_path) -> ServerProcess:
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "models").write_text('{"data": []}')
    port = free_port()
    return ServerProcess([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory",
                          str(tmp_path)], f"http://127.0.0.1:{port}/v1", log_path=tmp_path / "server.log")


def test_a_server_restarted_from_a_thread_outlives_the_thread(tmp_path):
    # PR_SET_PDEATHSIG fires when the forking *thread* ends: a restart from a worker thread must not use it.
    server = models_server(tmp_path)
    try:
        thread = threading.Thread(target=server.start, args=(30,))
        thread.start()
        thread.join()
        time.sleep(1.0)
        assert server.running() and answers(server.base_url)
    finally:
        server.stop()


def test_kill_frees_the_port_and_the_server_restarts_on_it(tmp_path):
    server = models_server(tmp_path)
    with server.start(30):
        server.kill()
        assert not answers(server.base_url)
        server.start(30)
        assert answers(server.base_url)
    assert not server.running()


def test_a_server_that_exits_before_answering_is_reported_with_its_log(tmp_path):
    server = ServerProcess([sys.executable, "-c", "print('no model here'); raise SystemExit(4)"],
                           f"http://127.0.0.1:{free_port()}/v1", log_path=tmp_path / "server.log", name="broken")
    with pytest.raises(ServerFailed, match=r"broken exited with status 4 before answering(.|\n)*no model here"):
        server.start(30)
