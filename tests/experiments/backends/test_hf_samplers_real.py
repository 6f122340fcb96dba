"""The new samplers on the real embedded model: a story depends on its seed alone, whatever the batch
and whether diagnostics are recorded, and the diagnostics describe what the chain did."""

from __future__ import annotations

import math

import pytest

from experiments.backends.base import StoryRequest
from experiments.backends.hf import HFBackend
from experiments.config import HFBackendConfig, PromptConfig, SamplingConfig

pytestmark = pytest.mark.slow

SAMPLING = SamplingConfig(temperature=1.3, xtc_probability=0.5, xtc_threshold=0.1, top_n_sigma=1.5,
                          dry_multiplier=0.8, dynatemp_range=0.3, max_tokens=24)


def stories(batch_size: int, diagnostics: bool, count: int = 5) -> dict:
    backend = HFBackend(HFBackendConfig(batch_size=batch_size))
    backend.record_diagnostics = diagnostics
    prompt = backend.prompt_text(PromptConfig(id="p", messages=[{"role": "user", "content": "Write a story."}]))
    requests = [StoryRequest(f"s{index}", index, 500 + index, prompt) for index in range(count)]
    try:
        return {story.request.story_id: story for story in backend.generate(requests, SAMPLING)}
    finally:
        backend.close()


def test_a_story_depends_on_its_seed_alone_with_the_new_samplers_and_diagnostics_change_nothing():
    alone = stories(batch_size=1, diagnostics=False)
    together = stories(batch_size=4, diagnostics=True)
    assert {key: (s.text, s.token_logprobs) for key, s in alone.items()} == \
           {key: (s.text, s.token_logprobs) for key, s in together.items()}
    assert len({story.text for story in together.values()}) > 1
    for story in together.values():
        record = story.sampler_diagnostics
        assert alone[story.request.story_id].sampler_diagnostics is None
        assert [len(record[key]) for key in ("entropy_before", "entropy_after", "candidates_kept")] == [story.n_tokens] * 3
        for before, after, kept in zip(record["entropy_before"], record["entropy_after"], record["candidates_kept"]):
            assert 1 <= kept < 49152  # top-n-sigma always cuts the long tail
            assert 0 <= after <= math.log(kept) + 1e-4 and before > 0
