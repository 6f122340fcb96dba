"""The static decoder's attention kernel (``decode_attention.cpp``): compiled once per machine, then loaded.

It is compiled for this CPU (``-march=native``) into the harness's cache,
under a key of the source, torch's version, the compiler and the CPU's
instruction set, so a change of any of them compiles anew (about 20 s
here) and a finished build is never half-written (``cached_folder``).
Loading registers ``torch.ops.creativity_harness.decode_attention``.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

from experiments.servers.cached_setup import cached_folder, cpu_flags, run_step

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("decode_attention.cpp")
LIBRARY = "decode_attention.so"
# -march=native: the vector instructions of this CPU (the build is keyed on its flags). No -ffast-math:
# the kernel's sums must keep the order its source gives them.
CFLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-std=c++20", "-fPIC", "-shared")

_loaded = False


def compiler() -> Optional[str]:
    """The C++ compiler the kernel is built with: $CXX, else c++ or g++ on the PATH; None when there is none."""
    chosen = os.environ.get("CXX")
    if chosen:
        return shutil.which(chosen) or (chosen if Path(chosen).is_file() else None)
    return shutil.which("c++") or shutil.which("g++")


def unavailable_reason() -> Optional[str]:
    """Why the kernel cannot be built here (checked without building), or None."""
    if not sys.platform.startswith("linux"):
        return f"it is built for Linux only (this is {sys.platform})"
    if compiler() is None:
        return "there is no C++ compiler (set CXX, or install g++)"
    return None


def _compiler_version(path: str) -> str:
    try:
        return subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"


def _build(folder: Path, log_path: Path, cxx: str) -> None:
    import torch
    from torch.utils.cpp_extension import include_paths, library_paths

    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    libraries = library_paths()
    command = [cxx, *CFLAGS, f"-D_GLIBCXX_USE_CXX11_ABI={abi}", *[f"-I{path}" for path in include_paths()],
               str(SOURCE), "-o", str(folder / LIBRARY), *[f"-L{path}" for path in libraries],
               *[f"-Wl,-rpath,{path}" for path in libraries], "-lc10", "-ltorch_cpu", "-ltorch"]
    run_step("compiling the static decoder's attention kernel", command, log_path)


def load() -> None:
    """Build (the first time on this machine) and load the kernel; raises SetupFailed naming the build log."""
    global _loaded
    if _loaded:
        return
    reason = unavailable_reason()
    if reason:
        raise RuntimeError(f"the static decoder's attention kernel cannot be built: {reason}")
    import torch

    cxx = compiler()
    key = [SOURCE.read_text(), torch.__version__, _compiler_version(cxx), " ".join(CFLAGS),
           " ".join(sorted(cpu_flags()))]

    def build(folder: Path, log_path: Path) -> None:
        log.info("hf: compiling the static decoder's attention kernel (once per machine, about 20 s)")
        _build(folder, log_path, cxx)

    folder = cached_folder("decode-attention", key, build)
    torch.ops.load_library(str(folder / LIBRARY))
    _loaded = True
