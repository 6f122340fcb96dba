"""transformers backend: batched generation on the CPU with per-story seeds.

``model.generate`` draws every row of a batch from one random generator, so a
story would depend on which other stories shared its batch. This backend runs
its own decoding loop instead, with one ``torch.Generator`` per story, seeded
with the story's seed, and one of two decoders:

- ``static`` (the default for Llama-family models): the model's weights run
  on a static KV cache with continuous batching (``static_decoder.py``,
  ``continuous.py``): a finished story's slot takes the next story at once.
  Its attention is a small C++ kernel compiled once per machine
  (``attention_kernel.py``); where there is no compiler, ``auto`` takes the
  transformers decoder and says so.
- ``transformers``: the model's own modules, a batch at a time, finished
  stories leaving the batch; any architecture transformers loads. This is
  the decoder of harness versions before the static one, and makes their
  stories again, byte for byte.

Either way every matrix multiply and every reduction over the vocabulary
runs on row tiles of a fixed size (``row_tiles.py``), because CPU kernels
change their order of summation with the number of rows; so a story's text
and log-probs are the same whatever the batch size, ``n`` or a resume put
beside it, in bfloat16 as in float32. The two decoders sum in different
orders, so a story's bits depend on the decoder, which is part of its id.
The sampler chain (``hf_samplers.py``) is llama.cpp's, sampler for sampler
and in the setting's order (``experiments/samplers.py``), so both in-process
backends sample the same distribution: by default logit bias, penalties,
DRY, top-n-sigma, top-k, typical, top-p, min-p, XTC, temperature.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Iterator, Optional

from experiments.backends import attention_kernel
from experiments.backends.base import Backend, GeneratedStory, SamplerDiagnostics, StoryRequest
from experiments.backends.hf_samplers import (SamplerChain, apply_penalties, choose_tokens, draw_uniforms,  # noqa: F401
                                              draws_per_token, dry_tables_for, needs_history, sample_by_inverse_cdf)
from experiments.backends.row_tiles import ROWS_PER_TILE, map_row_tiles, tile_linear_layers
from experiments.config import ConfigError, HFBackendConfig, SamplingConfig
from experiments.backends.continuous import decode_continuously
from experiments.backends.static_decoder import NUMERICS as STATIC_NUMERICS
from experiments.backends.static_decoder import (GGUF_ARCHITECTURES, STATIC_ROWS_PER_TILE, StaticDecoder,
                                                 cache_length, unsupported_reason)
from experiments.servers.cached_setup import SetupFailed
from experiments.models import (gguf_chat_metadata, load_transformers_causal_lm, model_identity, resolve_dtype,
                               resolve_model_path)

log = logging.getLogger(__name__)

# Generated tokens the static cache holds at first; it grows (doubling) only when a story runs longer.
INITIAL_CACHE_TOKENS = 512

# Texts llama.cpp also treats as end of generation; listed here so both
# backends stop on the same tokens.
END_OF_TURN_TEXTS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>", "</s>", "<|end|>")


class HFBackend(Backend):
    name = "hf"
    reports_tokens = True
    records_diagnostics = True
    supported_parameters = frozenset({
        "top_p", "top_k", "min_p", "typical_p", "repetition_penalty", "presence_penalty",
        "frequency_penalty", "repeat_last_n", "logit_bias", "stop",
        "xtc_probability", "xtc_threshold", "top_n_sigma", "dry_multiplier", "dry_base", "dry_allowed_length",
        "dry_penalty_last_n", "dry_sequence_breakers", "dynatemp_range", "dynatemp_exponent", "sampler_order",
    })

    def __init__(self, config: HFBackendConfig):
        super().__init__(config)
        self.model_path: Path = resolve_model_path(config.model_path, config.model_package, config.model_file)
        self._identity = model_identity(self.model_path)
        self.dtype = resolve_dtype(config.dtype)
        self.model = self.tokenizer = self.static = None
        self.decoder = config.decoder  # "auto" until _decoder_name reads the architecture from the GGUF header

    def load(self) -> None:
        if self.model is not None:
            return
        import torch

        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        self.model, self.tokenizer = load_transformers_causal_lm(self.model_path, self.dtype)
        reason = unsupported_reason(self.model)
        if self._decoder_name() == "static" and reason:
            # Refused rather than switched: the stories' ids already name the static decoder.
            raise ConfigError(f"backend.decoder={self.config.decoder} chose the static decoder, which cannot run "
                              f"{self.model_path.name}: {reason}; set backend.decoder=transformers")
        if self.decoder == "static":
            try:
                self.static = StaticDecoder(self.model, STATIC_ROWS_PER_TILE if self.config.batch_invariant else None)
            except (RuntimeError, SetupFailed) as error:  # the attention kernel did not build
                raise ConfigError(f"backend.decoder={self.config.decoder} chose the static decoder: {error}; "
                                  "set backend.decoder=transformers") from error
        elif self.config.batch_invariant:
            tile_linear_layers(self.model)
        self.end_ids = self._end_of_turn_ids()

    def _end_of_turn_ids(self) -> list[int]:
        vocab = self.tokenizer.get_vocab()
        ids = {self.tokenizer.eos_token_id} | {vocab[text] for text in END_OF_TURN_TEXTS if text in vocab}
        return sorted(i for i in ids if i is not None)

    def _decoder_name(self) -> str:
        if self.decoder == "auto":  # a story's id is needed before its model loads: decide from the GGUF header
            architecture = gguf_chat_metadata(self.model_path).get("architecture")
            kernel_missing = attention_kernel.unavailable_reason()
            self.decoder = "static" if architecture in GGUF_ARCHITECTURES and not kernel_missing else "transformers"
            if architecture not in GGUF_ARCHITECTURES:
                log.info("hf: GGUF architecture %r has no static decoder; decoding with transformers' modules",
                         architecture)
            elif kernel_missing:
                log.warning("hf: the static decoder's attention kernel cannot be built here (%s); decoding with "
                            "transformers' modules, about half as fast", kernel_missing)
        elif self.decoder == "static" and attention_kernel.unavailable_reason():
            raise ConfigError(f"backend.decoder=static needs its attention kernel, which cannot be built here: "
                              f"{attention_kernel.unavailable_reason()}; set backend.decoder=transformers or auto")
        return self.decoder

    def identity(self) -> dict[str, Any]:
        static = self._decoder_name() == "static"
        rows = (STATIC_ROWS_PER_TILE if static else ROWS_PER_TILE) if self.config.batch_invariant else None
        return {"model": self.model_path.name, **self._identity, "runtime": "transformers", "precision": self.dtype,
                "decoder": self._decoder_name(), "rows_per_tile": rows}

    def variant(self) -> str:
        # Precision, kernels and decoder change the numbers, so stories made either way never share ids.
        # The transformers decoder keeps the ids of the versions before the static one.
        precision = "" if self.dtype == "float32" else f":{self.dtype}"
        decoder = f":{STATIC_NUMERICS}" if self._decoder_name() == "static" else ""
        return precision + decoder + ("" if self.config.batch_invariant else ":batch-variant")

    def chat_metadata(self) -> Optional[dict[str, Any]]:
        return gguf_chat_metadata(self.model_path)

    def generate(self, requests: list[StoryRequest], sampling: SamplingConfig) -> Iterator[GeneratedStory]:
        self.load()
        batch_size = self.config.batch_size
        by_prompt: dict[str, list[StoryRequest]] = {}
        for request in requests:
            by_prompt.setdefault(request.prompt, []).append(request)
        for prompt_requests in by_prompt.values():
            if self.static is not None:
                yield from self._generate_continuously(prompt_requests, sampling)
                continue
            for start in range(0, len(prompt_requests), batch_size):
                yield from self._generate_batch(prompt_requests[start:start + batch_size], sampling)

    def _check_context(self, prompt_length: int, sampling: SamplingConfig) -> None:
        context = getattr(self.model.config, "max_position_embeddings", None)
        if context and prompt_length + sampling.max_tokens > context:
            raise ConfigError(
                f"sampling.max_tokens={sampling.max_tokens} plus the prompt's {prompt_length} tokens exceed "
                f"the model's context of {context} tokens; lower max_tokens")

    def _generate_continuously(self, requests: list[StoryRequest], sampling: SamplingConfig) -> Iterator[GeneratedStory]:
        prompt_ids = self._prompt_ids(requests[0].prompt)
        self._check_context(len(prompt_ids), sampling)
        slots, length = min(self.config.batch_size, len(requests)), cache_length(len(prompt_ids), sampling.max_tokens)
        initial = min(length, cache_length(len(prompt_ids), INITIAL_CACHE_TOKENS))
        worst, available = self.static.cache_bytes(slots, length), available_memory_bytes()
        if available is not None and self.static.cache_bytes(slots, initial) > available:
            raise ConfigError(
                f"the static decoder's cache for backend.batch_size={self.config.batch_size} stories needs "
                f"{self.static.cache_bytes(slots, initial) / 2**30:.1f} GiB to start, and "
                f"{available / 2**30:.1f} GiB of memory is available; lower backend.batch_size")
        if available is not None and worst > available:
            log.warning("if the longest story of a step reaches sampling.max_tokens=%d, the static cache grows to "
                        "%.1f GiB, more than the %.1f GiB available now; lower backend.batch_size if it runs out "
                        "(finished stories are kept either way)", sampling.max_tokens, worst / 2**30,
                        available / 2**30)
        self.static.allocate(slots, length, initial)
        choose = self._chooser(sampling)

        has_stopped = None
        if sampling.stop:
            def has_stopped(tokens: list[int]) -> bool:
                return self._text_before_stop(tokens, sampling.stop) is not None

        for finished in decode_continuously(self.static, requests, sampling, prompt_ids, self.config.batch_size,
                                            set(self.end_ids), choose, has_stopped, self.on_tokens):
            story = finished.story
            ids = story.tokens[:-1] if finished.ended else story.tokens
            stopped_text = self._text_before_stop(ids, sampling.stop) if sampling.stop and not finished.ended else None
            yield GeneratedStory(
                request=story.request,
                text=stopped_text if stopped_text is not None else self.tokenizer.decode(ids, skip_special_tokens=True),
                n_tokens=len(ids),
                finish_reason="length" if stopped_text is None and not finished.ended else "stop",
                token_logprobs=story.logprobs[:len(ids)],
                latency_s=time.perf_counter() - story.started,
                sampler_diagnostics=SamplerDiagnostics(*story.diagnostics).as_record(len(ids))
                if self.record_diagnostics else None)

    def _chooser(self, sampling: SamplingConfig):
        """``choose(history, logits, uniforms)`` for one setting (see hf_samplers.choose_tokens)."""
        vocab_size = self.model.config.vocab_size
        chain = SamplerChain(sampling, vocab_size, dry_tables_for(sampling, self.tokenizer, vocab_size))
        diagnostics = self.record_diagnostics

        def choose(*rows):
            return choose_tokens(chain, *rows, diagnostics=diagnostics)
        return choose

    def _prompt_ids(self, prompt: str) -> list[int]:
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if gguf_chat_metadata(self.model_path).get("add_bos_token") and self.tokenizer.bos_token_id is not None:
            ids = [self.tokenizer.bos_token_id] + ids
        return ids

    def _generate_batch(self, batch: list[StoryRequest], sampling: SamplingConfig) -> Iterator[GeneratedStory]:
        import torch
        from transformers import DynamicCache

        started = time.perf_counter()
        choose = self._chooser(sampling)
        history_needed, draws = needs_history(sampling), draws_per_token(sampling)
        generators = [torch.Generator().manual_seed(request.seed) for request in batch]
        prompt_ids = torch.tensor([self._prompt_ids(batch[0].prompt)])
        self._check_context(prompt_ids.shape[1], sampling)
        active = list(range(len(batch)))  # positions in `batch` still generating
        generated = torch.empty((len(batch), 0), dtype=torch.long)
        logprobs: list[list[float]] = [[] for _ in batch]
        diagnostics: list[tuple[list, list, list]] = [([], [], []) for _ in batch]
        end_set = set(self.end_ids)
        cache = DynamicCache()

        with torch.inference_mode():
            # Every story of the batch has the same prompt: encode it once, then
            # give each row its own copy of that cache.
            logits = self._next_logits(prompt_ids, cache).expand(len(batch), -1)
            cache.batch_repeat_interleave(len(batch))
            for step in range(sampling.max_tokens):
                uniforms = draw_uniforms([generators[index] for index in active], draws)
                history = generated if history_needed else None
                # Reductions over the vocabulary (softmax, logsumexp) also pick
                # their kernel by shape, so they too run on fixed-size row tiles.
                tokens, token_logprobs, *step_diagnostics = (
                    map_row_tiles(choose, history, logits, uniforms)
                    if self.config.batch_invariant else choose(history, logits, uniforms))
                token_logprobs = token_logprobs.tolist()
                step_diagnostics = [part.tolist() for part in step_diagnostics]
                if self.on_tokens:
                    self.on_tokens(len(active))
                for row, index in enumerate(active):
                    logprobs[index].append(token_logprobs[row])
                    for values, part in zip(diagnostics[index], step_diagnostics):
                        values.append(part[row])
                generated = torch.cat([generated, tokens[:, None]], dim=1)

                keep = []
                for row, index in enumerate(active):
                    ended = int(tokens[row]) in end_set
                    stopped_text = self._text_before_stop(generated[row], sampling.stop) if sampling.stop and not ended else None
                    if ended or stopped_text is not None or step + 1 == sampling.max_tokens:
                        ids = generated[row][:-1] if ended else generated[row]
                        yield GeneratedStory(
                            request=batch[index],
                            text=stopped_text if stopped_text is not None else self.tokenizer.decode(ids, skip_special_tokens=True),
                            n_tokens=len(ids),
                            finish_reason="length" if stopped_text is None and not ended else "stop",
                            token_logprobs=logprobs[index][:len(ids)],
                            latency_s=time.perf_counter() - started,
                            sampler_diagnostics=SamplerDiagnostics(*diagnostics[index]).as_record(len(ids))
                            if self.record_diagnostics else None)
                    else:
                        keep.append(row)
                if not keep:
                    break
                if len(keep) < len(active):
                    index_tensor = torch.tensor(keep)
                    cache.batch_select_indices(index_tensor)
                    generated = generated[index_tensor]
                    tokens = tokens[index_tensor]
                    active = [active[row] for row in keep]
                logits = self._next_logits(tokens[:, None], cache)

    def _next_logits(self, input_ids, cache):
        """Float32 logits of the next token for each row, extending ``cache``."""
        return self.model(input_ids=input_ids, past_key_values=cache, use_cache=True,
                          logits_to_keep=1).logits[:, -1, :].float()

    def _text_before_stop(self, ids, stop: list[str]) -> Optional[str]:
        """The text cut at the first stop sequence, or None while no stop sequence appeared."""
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        positions = [text.find(sequence) for sequence in stop if sequence in text]
        return text[:min(positions)] if positions else None


def available_memory_bytes() -> Optional[int]:
    """MemAvailable from /proc/meminfo (Linux), or None where there is none."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
