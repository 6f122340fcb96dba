"""Continuous batching on the static decoder: a finished story's slot takes the next story at once.

All stories share one prompt, encoded once; a story entering a slot gets a
copy of the prompt's cache and samples its first token from the prompt's
logits. Running stories are kept in the lowest slots, and a step decodes
only the tiles they occupy: once the queue is empty, a story from the top
tile moves down into a freed slot, so the batch shrinks a tile at a time.
Each story draws from its own generator, and the decoder's numbers for a
row are the row's alone, so where and beside whom a story ran never shows.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import torch

from experiments.backends.base import StoryRequest
from experiments.backends.hf_samplers import draw_uniforms, draws_per_token, needs_history
from experiments.backends.row_tiles import map_row_tiles
from experiments.backends.static_decoder import StaticDecoder
from experiments.config import SamplingConfig


@dataclass
class RunningStory:
    request: StoryRequest
    generator: torch.Generator
    started: float
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    # Per token, when the chooser returns them: entropy before and after the chain, candidates kept.
    diagnostics: tuple[list, list, list] = field(default_factory=lambda: ([], [], []))


@dataclass
class FinishedTokens:
    """A story's tokens once it ended: ``ended`` when its last token is an end-of-turn token."""

    story: RunningStory
    ended: bool


def decode_continuously(decoder: StaticDecoder, requests: list[StoryRequest], sampling: SamplingConfig,
                        prompt_ids: list[int], batch_size: int, end_ids: set[int], choose: Callable,
                        has_stopped: Optional[Callable[[list[int]], bool]] = None,
                        on_tokens: Optional[Callable[[int], None]] = None) -> Iterator[FinishedTokens]:
    """Yield every request's tokens as soon as its story ends, ``batch_size`` stories decoding at a time.

    ``choose(history, logits, uniforms)`` returns (tokens, log-probs[, entropy
    before, entropy after, candidates kept]) for a tile of rows; ``history`` is
    each row's generated tokens left-padded with -1 (None unless penalties or
    DRY run); ``has_stopped(tokens)`` says whether a stop sequence ended
    the story; ``on_tokens(count)`` hears how many tokens each step made.
    """
    prompt_logits, prompt_cache = decoder.prefill(prompt_ids)
    tile = decoder.rows_per_tile or 1
    slots: list[Optional[RunningStory]] = [None] * min(batch_size, decoder.slots)
    logits = torch.empty((decoder.slots, prompt_logits.shape[0]))
    queue = deque(requests)
    history = torch.full((decoder.slots, sampling.max_tokens), -1, dtype=torch.long) if needs_history(sampling) else None
    draws = draws_per_token(sampling)
    prompt_length = len(prompt_ids)

    def enter(slot: int) -> None:
        request = queue.popleft()
        slots[slot] = RunningStory(request, torch.Generator().manual_seed(request.seed), time.perf_counter())
        decoder.place(slot, prompt_cache)
        logits[slot] = prompt_logits
        if history is not None:
            history[slot] = -1

    def move(source: int, target: int) -> None:
        decoder.move(source, target)
        slots[target], slots[source] = slots[source], None
        logits[target] = logits[source]
        if history is not None:
            history[target] = history[source]

    while True:
        for slot, story in enumerate(slots):
            if story is None and queue:
                enter(slot)
        occupied = [slot for slot, story in enumerate(slots) if story is not None]
        if not occupied:
            return
        running = [slots[slot] for slot in occupied]
        index = torch.tensor(occupied)
        uniforms = draw_uniforms([story.generator for story in running], draws)
        window = _windows(history[index], [len(story.tokens) for story in running],
                          None) if history is not None else None
        tokens, token_logprobs, *diagnostics = map_row_tiles(choose, window, logits[index], uniforms)
        if on_tokens:
            on_tokens(len(occupied))
        diagnostics = [part.tolist() for part in diagnostics]
        for row, (slot, story, token, logprob) in enumerate(zip(occupied, running, tokens.tolist(),
                                                                token_logprobs.tolist())):
            story.tokens.append(token)
            story.logprobs.append(logprob)
            for values, part in zip(story.diagnostics, diagnostics):
                values.append(part[row])
            if history is not None:
                history[slot, len(story.tokens) - 1] = token
            ended = token in end_ids
            if ended or len(story.tokens) == sampling.max_tokens or (has_stopped and has_stopped(story.tokens)):
                slots[slot] = None
                yield FinishedTokens(story, ended)
        if not queue:
            _pack(slots, tile, move)
        highest = max((slot for slot, story in enumerate(slots) if story is not None), default=-1)
        if highest < 0:
            continue  # every story ended this step; the queue (if any) refills the slots
        rows = highest + 1
        step_tokens = torch.zeros(rows, dtype=torch.long)
        positions = torch.zeros(rows, dtype=torch.long)
        for slot in range(highest + 1):
            story = slots[slot]
            if story is not None:
                step_tokens[slot] = story.tokens[-1]
                positions[slot] = prompt_length + len(story.tokens) - 1
        decoder.step(step_tokens, positions, out=logits[:rows])


def _pack(slots: list[Optional[RunningStory]], tile: int, move: Callable[[int, int], None]) -> None:
    """Move stories out of the highest tile into free lower slots while that saves a tile."""
    while True:
        occupied = [slot for slot, story in enumerate(slots) if story is not None]
        if not occupied:
            return
        needed = -(-len(occupied) // tile) * tile
        if occupied[-1] < needed:
            return
        free = next(slot for slot in range(needed) if slots[slot] is None)
        move(occupied[-1], free)


def _windows(history: torch.Tensor, lengths: list[int], repeat_last_n: Optional[int]) -> torch.Tensor:
    """Each row's penalty window: its last ``repeat_last_n`` tokens (all when None or -1), left-padded with -1."""
    longest = max(lengths)
    width = longest if repeat_last_n in (None, -1) else min(repeat_last_n, longest)
    offsets = torch.tensor(lengths)[:, None] - width + torch.arange(width)[None, :]
    window = history.gather(1, offsets.clamp(min=0))
    return window.masked_fill(offsets < 0, -1)
