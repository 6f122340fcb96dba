"""llama-cpp-python backend: the paper's runtime, one story at a time, in process.

Each story is decoded with llama-cpp-python's low-level context and sampled
with a llama.cpp sampler chain of our own (``llamacpp_chain``), so that XTC,
top-n-sigma, DRY, dynamic temperature and ``sampler_order`` run exactly as
llama.cpp defines them; ``Llama.generate`` has none of them. Settings it did
support give the same tokens as before for the same seed.

Log-probs come from the last logits row after each decode rather than
``create_completion(logprobs=...)``, which needs ``logits_all=True`` (a
context-sized logits buffer, about 0.8 GB at 4096 tokens for a 49k vocabulary)
and sorts the whole vocabulary per token in Python.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from experiments.backends.base import Backend, GeneratedStory, SamplerDiagnostics, StoryRequest
from experiments.backends.llamacpp_amx import no_amx_repacking
from experiments.backends.llamacpp_chain import SamplerChain, entropy
from experiments.config import ConfigError, LlamaCppBackendConfig, SamplingConfig
from experiments.models import gguf_chat_metadata, model_identity, resolve_model_path

log = logging.getLogger(__name__)


class LlamaCppBackend(Backend):
    name = "llamacpp"
    supported_parameters = frozenset({
        "top_p", "top_k", "min_p", "typical_p", "repetition_penalty", "presence_penalty",
        "frequency_penalty", "repeat_last_n", "mirostat_mode", "mirostat_tau", "mirostat_eta",
        "logit_bias", "grammar", "json_schema", "top_logprobs", "stop",
        "xtc_probability", "xtc_threshold", "top_n_sigma", "dry_multiplier", "dry_base", "dry_allowed_length",
        "dry_penalty_last_n", "dry_sequence_breakers", "dynatemp_range", "dynatemp_exponent", "sampler_order",
    })
    records_diagnostics = True

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
                             n_threads_batch=threads, n_gpu_layers=self.config.n_gpu_layers, verbose=False)

    def identity(self) -> dict[str, Any]:
        import llama_cpp

        return {"model": self.model_path.name, **self._identity, "runtime": f"llama-cpp-python {llama_cpp.__version__}"}

    def chat_metadata(self) -> Optional[dict[str, Any]]:
        return gguf_chat_metadata(self.model_path)

    def generate(self, requests: list[StoryRequest], sampling: SamplingConfig) -> Iterator[GeneratedStory]:
        self.load()
        for request in requests:
            yield self._generate_one(request, sampling)

    def _generate_one(self, request: StoryRequest, sampling: SamplingConfig) -> GeneratedStory:
        import llama_cpp

        llm = self.llm
        started = time.perf_counter()
        prompt_tokens = llm.tokenize(request.prompt.encode("utf-8"), add_bos=gguf_chat_metadata(self.model_path)["add_bos_token"], special=True)
        if len(prompt_tokens) + sampling.max_tokens > llm.n_ctx():
            raise ConfigError(
                f"sampling.max_tokens={sampling.max_tokens} plus the prompt's {len(prompt_tokens)} tokens exceed "
                f"backend.n_ctx={llm.n_ctx()}; raise backend.n_ctx or lower max_tokens")
        vocab = llm._model.vocab
        n_vocab = llm.n_vocab()
        diagnostics = SamplerDiagnostics([], [], []) if self.record_diagnostics else None
        tokens: list[int] = []
        logprobs: list[float] = []
        alternatives: Optional[list[dict[str, Any]]] = [] if sampling.top_logprobs else None
        finish_reason = "length"
        text = None
        # Each story starts from an empty cache: its text cannot depend on the story before it.
        llm.reset()
        llm.eval(prompt_tokens)
        with SamplerChain(sampling, vocab, request.seed, whole_window=llm.n_ctx()) as chain:
            while True:
                # The logits row of the last decoded position, before any sampler touched it.
                logits = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(n_vocab,))
                token = chain.sample(logits)
                if diagnostics is not None:
                    after, kept = chain.drawn_from()
                    diagnostics.entropy_before.append(entropy(logits))
                    diagnostics.entropy_after.append(after)
                    diagnostics.candidates_kept.append(kept)
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    finish_reason = "stop"
                    break
                top = logits.max()
                log_sum = np.log(np.exp(logits - top).sum())
                # In this order, to the last bit the log-probs the backend always stored.
                logprobs.append(float(logits[token] - top - log_sum))
                if alternatives is not None:
                    alternatives.append(self._alternatives(logits, top, log_sum, token, sampling.top_logprobs))
                tokens.append(token)
                if sampling.stop:
                    decoded = llm.detokenize(tokens).decode("utf-8", errors="ignore")
                    positions = [decoded.find(s) for s in sampling.stop if s in decoded]
                    if positions:
                        text, finish_reason = decoded[:min(positions)], "stop"
                        break
                if len(tokens) >= sampling.max_tokens:
                    break
                llm.eval([token])
        if text is None:
            text = llm.detokenize(tokens).decode("utf-8", errors="replace")
        return GeneratedStory(request=request, text=text, n_tokens=len(tokens), finish_reason=finish_reason,
                              token_logprobs=logprobs, latency_s=time.perf_counter() - started,
                              sampler_diagnostics=diagnostics.as_record(len(tokens)) if diagnostics else None,
                              token_alternatives=alternatives)

    def _piece(self, token: int) -> str:
        return self.llm.detokenize([token]).decode("utf-8", errors="replace")

    def _alternatives(self, logits: np.ndarray, top: float, log_sum: float, token: int,
                      count: int) -> dict[str, Any]:
        """The chosen token and the ``count`` most likely ones, with log-probs of the untempered model."""
        best = np.argpartition(-logits, count)[:count] if count < len(logits) else np.arange(len(logits))
        best = best[np.argsort(-logits[best], kind="stable")]
        return {"token": self._piece(token), "logprob": float(logits[token] - top - log_sum),
                "top": [[self._piece(int(i)), float(logits[i] - top - log_sum)] for i in best]}

    def close(self) -> None:
        if self.llm is not None:
            self.llm.close()
            self.llm = None
