"""llama.cpp on CPUs with AMX: the crash of llama.cpp issue 20824 must stay fixed.

On an AMX CPU a llama.cpp build with AMX kernels that repacks weights
segfaults at the first decode. Two workarounds guard against it (see
``experiments/backends/llamacpp_amx.py``); each has a test here that fails on
an AMX machine when that workaround is removed. The decode tests run in a
subprocess so that a segfault is a failed test, not a dead test run.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from experiments.backends.llamacpp_amx import build_has_amx, llama_system_info, no_amx_repacking

REPO = Path(__file__).resolve().parents[2]


def cpu_has_amx() -> bool:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return False
    return "amx_int8" in flags.split()


needs_amx_cpu = pytest.mark.skipif(not cpu_has_amx(), reason="this CPU has no AMX (no amx_int8 in /proc/cpuinfo): "
                                                             "llama.cpp issue 20824 cannot occur here")


def test_amx_is_read_from_llama_system_info():
    assert build_has_amx("CPU : AVX2 = 1 | AMX_INT8 = 1 | REPACK = 1 |")
    assert not build_has_amx("CPU : AVX2 = 1 | AVX512 = 1 | REPACK = 1 |")
    assert not build_has_amx("CPU : AMX_INT8 = 0 |")


def test_repacking_is_turned_off_only_for_builds_with_amx(monkeypatch):
    import llama_cpp.llama_cpp as lib

    import experiments.backends.llamacpp_amx as amx

    for info, expect_patch in (("CPU : AMX_INT8 = 1 |", True), ("CPU : AVX2 = 1 |", False)):
        monkeypatch.setattr(amx, "llama_system_info", lambda info=info: info)
        original = lib.llama_model_default_params
        with no_amx_repacking() as applied:
            assert applied is expect_patch
            assert lib.llama_model_default_params().use_extra_bufts is (not expect_patch)
        assert lib.llama_model_default_params is original


@needs_amx_cpu
def test_the_installed_build_has_no_amx_kernels():
    """scripts/build-llama-cpp compiles the AMX kernels out; a build that has them came from elsewhere."""
    info = llama_system_info()
    assert not build_has_amx(info), (
        f"llama-cpp-python was built with AMX kernels ({info}); scripts/bootstrap installs a build without them")


DECODE = """
from experiments.backends.llamacpp import LlamaCppBackend
from experiments.backends.base import StoryRequest
from experiments.config import LlamaCppBackendConfig, SamplingConfig
backend = LlamaCppBackend(LlamaCppBackendConfig())
sampling = SamplingConfig(temperature=1.0, max_tokens=8, n=1)
story = next(backend.generate([StoryRequest(story_id="amx", prompt="Write a story.", seed=1, sample_index=0)], sampling))
print(story.n_tokens)
"""


@pytest.mark.slow
@needs_amx_cpu
def test_in_process_backend_decodes_on_an_amx_cpu():
    result = subprocess.run([sys.executable, "-c", DECODE], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"decode died with status {result.returncode} (a segfault is -11):\n{result.stderr[-2000:]}"
    assert int(result.stdout.split()[-1]) > 0


@pytest.mark.slow
@needs_amx_cpu
def test_llamacpp_server_decodes_on_an_amx_cpu(tmp_path):
    from experiments.models import embedded_gguf_path

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen([sys.executable, "-m", "experiments.llamacpp_server", "--model", str(embedded_gguf_path()),
                               "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "512"],
                              cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        body = json.dumps({"prompt": "Once upon a time", "max_tokens": 8, "temperature": 1.0, "seed": 1}).encode()
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, f"server died with status {server.returncode}:\n{(tmp_path / 'server.log').read_text()[-2000:]}"
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=body,
                                                 headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=60) as response:
                    answer = json.load(response)
                break
            except OSError:
                assert time.monotonic() < deadline, "server did not answer within 180 s"
                time.sleep(0.5)
        assert answer["choices"][0]["text"]
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
