"""Keep llama.cpp off its AMX path, which segfaults at the first decode.

On Intel Xeons with AMX (Sapphire Rapids and later) a llama.cpp build with the
AMX kernels repacks quantised weights into an AMX buffer and then crashes in
``ggml_backend_amx_mul_mat`` (ggml-org/llama.cpp issue 20824, closed unfixed).
Two layers keep the harness off that path:

1. ``scripts/build-llama-cpp`` compiles llama-cpp-python without the AMX
   kernels, so the build the README installs cannot take it at all;
2. for a llama-cpp-python installed some other way (a user's own build),
   :func:`no_amx_repacking` loads models with
   ``llama_model_params.use_extra_bufts = False`` (no weight repacking)
   whenever the loaded library reports ``AMX_INT8 = 1``.  llama-cpp-python's
   ``Llama`` has no argument for that field, so the default-params function it
   calls is wrapped while a model loads.

Repacking is left on for builds without AMX: there it is the CPU repack
layout for some quantisations and costs nothing to keep.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

log = logging.getLogger(__name__)


def build_has_amx(system_info: str) -> bool:
    """Whether llama.cpp's system info (``llama_print_system_info``) lists the AMX int8 kernels."""
    return "AMX_INT8 = 1" in system_info


def llama_system_info() -> str:
    import llama_cpp

    return llama_cpp.llama_print_system_info().decode(errors="replace")


@contextlib.contextmanager
def no_amx_repacking() -> Iterator[bool]:
    """While active, models load without weight repacking if the build has AMX; yields whether it applied."""
    import llama_cpp.llama_cpp as lib

    if not build_has_amx(llama_system_info()):
        yield False
        return
    original = lib.llama_model_default_params

    def default_params_without_repacking():
        params = original()
        params.use_extra_bufts = False
        return params

    log.info("llama.cpp was built with AMX kernels: loading without weight repacking (llama.cpp issue 20824)")
    lib.llama_model_default_params = default_params_without_repacking
    try:
        yield True
    finally:
        lib.llama_model_default_params = original
