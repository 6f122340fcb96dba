"""llama-cpp-python backend: the paper's runtime, one story at a time, in process.

Stories are generated with ``Llama.generate`` rather than
``create_completion(logprobs=...)``: the latter needs ``logits_all=True`` (a
context-sized logits buffer, about 0.8 GB at 4096 tokens for a 49k vocabulary)
and sorts the whole vocabulary per token in Python. Reading the last logits
row after each sampled token gives the same untempered log-probs at no cost.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from experiments.backends.base import Backend, GeneratedStory, StoryRequest
from experiments.backends.llamacpp_amx import no_amx_repacking
from experiments.config import ConfigError, LlamaCppBackendConfig, SamplingConfig
from experiments.models import gguf_chat_metadata, model_identity, resolve_model_path

log = logging.getLogger(__name__)

# llama.cpp's own defaults for the penalty window and Mirostat, used when a
# setting leaves them unset.
DEFAULT_REPEAT_LAST_N = 64
DEFAULT_MIROSTAT_TAU = 5.0
DEFAULT_MIROSTAT_ETA = 0.1


class LlamaCppBackend(Backend):
    name = "llamacpp"
    supported_parameters = frozenset({
        "top_p", "top_k", "min_p", "typical_p", "repetition_penalty", "presence_penalty",
        "frequency_penalty", "repeat_last_n", "mirostat_mode", "mirostat_tau", "mirostat_eta",
        "logit_bias", "grammar", "stop",
    })

    def __init__(self, config: LlamaCppBackendConfig):
        super().__init__(config)
        self.model_path: Path = resolve_model_path(config.model_path, config.model_package, config.model_file)
        self._identity = model_identity(self.model_path)
        self.llm = None

    def load(self) -> None:
        if self.llm is not None:
            return
        from llama_cpp import Llama

        # llama-cpp-python's default is half the cores; use them all, like the hf backend.
        threads = self.config.threads or os.cpu_count() or 1
        with no_amx_repacking():
            self.llm = Llama(model_path=str(self.model_path), n_ctx=self.config.n_ctx, n_threads=threads,
                             n_threads_batch=threads, n_gpu_layers=self.config.n_gpu_layers,
                             last_n_tokens_size=DEFAULT_REPEAT_LAST_N, verbose=False)

    def identity(self) -> dict[str, Any]:
        import llama_cpp

        return {"model": self.model_path.name, **self._identity, "runtime": f"llama-cpp-python {llama_cpp.__version__}"}

    def chat_metadata(self) -> Optional[dict[str, Any]]:
        return gguf_chat_metadata(self.model_path)

    def generate(self, requests: list[StoryRequest], sampling: SamplingConfig) -> Iterator[GeneratedStory]:
        self.load()
        options = self._options(sampling)
        for request in requests:
            yield self._generate_one(request, sampling, options)

    def _options(self, sampling: SamplingConfig) -> dict[str, Any]:
        """Keyword arguments of ``Llama.generate``; unset parameters get their neutral value."""
        from llama_cpp import LlamaGrammar, LogitsProcessorList

        options: dict[str, Any] = {
            "temp": sampling.temperature,
            "top_k": sampling.top_k,
            "top_p": sampling.top_p,
            "min_p": sampling.min_p or 0.0,  # llama-cpp-python would otherwise apply min_p 0.05
            "typical_p": sampling.typical_p if sampling.typical_p is not None else 1.0,
            "repeat_penalty": sampling.repetition_penalty if sampling.repetition_penalty is not None else 1.0,
            "presence_penalty": sampling.presence_penalty or 0.0,
            "frequency_penalty": sampling.frequency_penalty or 0.0,
            "mirostat_mode": sampling.mirostat_mode or 0,
            "mirostat_tau": sampling.mirostat_tau or DEFAULT_MIROSTAT_TAU,
            "mirostat_eta": sampling.mirostat_eta or DEFAULT_MIROSTAT_ETA,
        }
        if sampling.grammar is not None:
            options["grammar"] = LlamaGrammar.from_string(sampling.grammar, verbose=False)
        if sampling.logit_bias:
            n_vocab = self.llm.n_vocab()
            bias = np.zeros(n_vocab, dtype=np.float32)
            for token, value in sampling.logit_bias.items():
                if int(token) >= n_vocab:
                    raise ConfigError(f"sampling.logit_bias: token id {token} is outside the vocabulary (size {n_vocab})")
                bias[int(token)] = value
            options["logits_processor"] = LogitsProcessorList([lambda _ids, logits: logits + bias])
        return options

    def _generate_one(self, request: StoryRequest, sampling: SamplingConfig, options: dict[str, Any]) -> GeneratedStory:
        import llama_cpp

        llm = self.llm
        started = time.perf_counter()
        prompt_tokens = llm.tokenize(request.prompt.encode("utf-8"), add_bos=gguf_chat_metadata(self.model_path)["add_bos_token"], special=True)
        if len(prompt_tokens) + sampling.max_tokens > llm.n_ctx():
            raise ConfigError(
                f"sampling.max_tokens={sampling.max_tokens} plus the prompt's {len(prompt_tokens)} tokens exceed "
                f"backend.n_ctx={llm.n_ctx()}; raise backend.n_ctx or lower max_tokens")
        llm.last_n_tokens_size = sampling.repeat_last_n if sampling.repeat_last_n is not None else DEFAULT_REPEAT_LAST_N
        llm.set_seed(request.seed)
        n_vocab = llm.n_vocab()
        tokens: list[int] = []
        logprobs: list[float] = []
        finish_reason = "length"
        text = None
        for token in llm.generate(prompt_tokens, reset=True, **options):
            # The logits row that produced `token`, before any sampler touched it.
            logits = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(n_vocab,))
            if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
                finish_reason = "stop"
                break
            top = logits.max()
            logprobs.append(float(logits[token] - top - np.log(np.exp(logits - top).sum())))
            tokens.append(token)
            if sampling.stop:
                decoded = llm.detokenize(tokens).decode("utf-8", errors="ignore")
                positions = [decoded.find(s) for s in sampling.stop if s in decoded]
                if positions:
                    text, finish_reason = decoded[:min(positions)], "stop"
                    break
            if len(tokens) >= sampling.max_tokens:
                break
        if text is None:
            text = llm.detokenize(tokens).decode("utf-8", errors="replace")
        return GeneratedStory(request=request, text=text, n_tokens=len(tokens), finish_reason=finish_reason,
                              token_logprobs=logprobs, latency_s=time.perf_counter() - started)

    def close(self) -> None:
        if self.llm is not None:
            self.llm.close()
            self.llm = None
