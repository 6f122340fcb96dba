"""The engines ``scripts/serve`` can start, and what each needs: set-up, command line, profile.

``prepare`` does the set-up an engine needs (cached after the first time)
and returns a ``Launch``: the command, its environment, the ``base_url`` and
the ``backend.profile`` the harness talks to it with.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional

from experiments.errors import HarnessInputError
from experiments.models import EMBEDDED_FILE, converted_transformers_dir, embedded_gguf_path
from experiments.servers import llama_server, vllm
from experiments.servers.cached_setup import say

# The name every engine serves the embedded model under: the default backend.model of conf/backend/openai.yaml,
# so a sweep needs only backend.base_url (and backend.profile) to switch engines.
SERVED_NAME = EMBEDDED_FILE


class ServeInputError(HarnessInputError):
    """A serve option names something that is not there (a file, a variable, an engine)."""


@dataclass(frozen=True)
class ServeOptions:
    engine: str
    host: str = "127.0.0.1"
    port: int = 8000
    model: Optional[Path] = None  # a GGUF file (vLLM: or a transformers folder); None: the embedded SmolLM2
    served_name: str = SERVED_NAME
    parallel: int = 4  # llama-server's slots (requests decoded together)
    ctx_per_request: int = 2048
    threads: Optional[int] = None  # llama.cpp engines' CPU threads; None: theirs
    dtype: Optional[str] = None  # vLLM; None: bfloat16 where the CPU has it natively, else float32
    api_key_env: Optional[str] = None  # the NAME of a variable holding the key the server must require
    extra: tuple[str, ...] = ()  # further arguments, passed to the engine as they are


@dataclass(frozen=True)
class Launch:
    engine: str
    argv: list[str]
    env: dict[str, str]
    base_url: str
    served_name: str
    profile: str  # backend.profile for this server
    ready_timeout_s: float  # how long a start may take before it counts as failed
    api_key: Optional[str] = field(default=None, repr=False)


def _api_key(options: ServeOptions) -> Optional[str]:
    if not options.api_key_env:
        return None
    key = os.environ.get(options.api_key_env)
    if not key:
        raise ServeInputError(f"serve: --api-key-env {options.api_key_env}: that environment variable is not set")
    return key


def _gguf(options: ServeOptions) -> Path:
    path = options.model or embedded_gguf_path()
    if not path.is_file() or path.suffix != ".gguf":
        raise ServeInputError(f"serve {options.engine}: --model {path}: expected a .gguf file")
    return path


def _base_url(options: ServeOptions) -> str:
    return f"http://{options.host}:{options.port}/v1"


def prepare_vllm(options: ServeOptions) -> Launch:
    python = vllm.vllm_python()
    dtype = options.dtype or vllm.default_dtype()
    model = options.model
    if model is None or model.suffix == ".gguf":
        gguf = _gguf(options)
        say(f"serving the transformers weights converted from {gguf.name} ({dtype}; converted once, cached)")
        model = converted_transformers_dir(gguf, dtype)
    elif not (model / "config.json").is_file():
        raise ServeInputError(f"serve vllm: --model {model}: expected a .gguf file or a transformers folder "
                         "(with config.json)")
    key = _api_key(options)
    return Launch("vllm", vllm.command(python, model, options.served_name, options.host, options.port, dtype,
                                       options.ctx_per_request, list(options.extra)),
                  vllm.environment(key), _base_url(options), options.served_name, "vllm", 900.0, key)


def prepare_llama_server(options: ServeOptions) -> Launch:
    binary = llama_server.llama_server_binary()
    key = _api_key(options)
    return Launch("llama-server",
                  llama_server.command(binary, _gguf(options), options.served_name, options.host, options.port,
                                       options.parallel, options.ctx_per_request, options.threads,
                                       list(options.extra)),
                  llama_server.environment(key), _base_url(options), options.served_name, "llamacpp_server",
                  180.0, key)


def prepare_llama_cpp_python(options: ServeOptions) -> Launch:
    key = _api_key(options)
    argv = [sys.executable, "-m", "experiments.llamacpp_server", "--model", str(_gguf(options)),
            "--model_alias", options.served_name, "--host", options.host, "--port", str(options.port),
            "--n_ctx", str(options.ctx_per_request)]
    if options.threads:
        argv += ["--n_threads", str(options.threads)]
    env = {name: value for name, value in os.environ.items() if name.upper() != "API_KEY"}
    if key:
        env["API_KEY"] = key  # its settings read the key from here (pydantic-settings); argv would show it in ps
    return Launch("llama-cpp-python", argv + list(options.extra), env, _base_url(options), options.served_name,
                  "llamacpp", 180.0, key)


ENGINES: Mapping[str, Callable[[ServeOptions], Launch]] = {
    "vllm": prepare_vllm,
    "llama-server": prepare_llama_server,
    "llama-cpp-python": prepare_llama_cpp_python,
}


def prepare(options: ServeOptions) -> Launch:
    """Set the engine up (once, cached) and say how to start it."""
    if options.engine not in ENGINES:
        raise ServeInputError(f"serve: unknown engine {options.engine!r}; choose one of {', '.join(ENGINES)}")
    return ENGINES[options.engine](options)
