"""Backend registry: a name in ``backend.name`` -> the class that implements it.

Entries are import paths, so choosing one backend never imports another's
heavy dependencies.
"""

from __future__ import annotations

import importlib

from experiments.backends.base import Backend, FailedStory, GeneratedStory, StoryRequest, used_parameters

BACKENDS: dict[str, str] = {
    "hf": "experiments.backends.hf:HFBackend",
    "llamacpp": "experiments.backends.llamacpp:LlamaCppBackend",
    "openai": "experiments.backends.openai_backend:OpenAIBackend",
}


def backend_class(name: str) -> type[Backend]:
    if name not in BACKENDS:
        raise ValueError(f"backend.name={name!r} is not a known backend; choose one of {sorted(BACKENDS)}")
    module_name, class_name = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


__all__ = ["BACKENDS", "Backend", "FailedStory", "GeneratedStory", "StoryRequest", "backend_class", "used_parameters"]
