"""The hf backend's two decoders on the real model, from the command line.

The static decoder (the default) must keep the fidelity issue's promise
beyond what test_seed_alone.py covers: across two row tiles, with penalties
and stop sequences; the transformers decoder must keep the story ids of the
versions before it.
"""

from __future__ import annotations

import pytest

from experiments.backends.hf import HFBackend
from experiments.config import HFBackendConfig
from experiments.models import resolve_dtype
from experiments.store import read_stories

from .conftest import run_generate
from .test_seed_alone import assert_same_stories

BASE = ("experiment=demo", "sampling.temperature=1.2", "sampling.max_tokens=24", "sampling.top_k=40",
        "sampling.repetition_penalty=1.3", "sampling.presence_penalty=0.3", "sampling.repeat_last_n=16",
        "sampling.stop=[',']")


def generate(out, *overrides: str) -> dict[str, dict]:
    run_generate(*BASE, *overrides, f"out_dir={out}")
    return {story["story_id"]: story for story in read_stories(out / "stories.jsonl")}


@pytest.mark.slow
def test_stories_over_two_tiles_with_penalties_and_stops_depend_on_their_seed_alone(tmp_path):
    # 40 stories: two row tiles of 32 at batch 40; 7 at a time, refilled as they end.
    wide = generate(tmp_path / "b40", "sampling.n=40", "backend.batch_size=40")
    narrow = generate(tmp_path / "b7", "sampling.n=40", "backend.batch_size=7")
    assert len(wide) == len(narrow) == 40
    assert_same_stories(narrow, wide)
    stops = [story for story in wide.values() if story["finish_reason"] == "stop"]
    assert stops and all("," not in story["text"] for story in stops)


@pytest.mark.slow
def test_the_transformers_decoder_still_runs_and_the_decoders_do_not_share_ids(tmp_path):
    static = generate(tmp_path / "static", "sampling.n=3")
    modules = generate(tmp_path / "modules", "sampling.n=3", "backend.decoder=transformers")
    assert len(static) == len(modules) == 3 and not static.keys() & modules.keys()
    assert {story["seed"] for story in static.values()} == {story["seed"] for story in modules.values()}


def test_story_ids_name_the_decoder_and_keep_the_earlier_ones_for_transformers():
    precision = "" if resolve_dtype("auto") == "float32" else f":{resolve_dtype('auto')}"
    assert HFBackend(HFBackendConfig(decoder="transformers")).variant() == precision  # as before the static decoder
    assert HFBackend(HFBackendConfig()).variant() == precision + ":static-2"  # auto: the embedded model is a Llama
    static = HFBackend(HFBackendConfig(decoder="static")).identity()
    assert static["decoder"] == "static" and static["rows_per_tile"] == 32
    assert HFBackend(HFBackendConfig(decoder="transformers")).identity()["rows_per_tile"] == 16


def test_the_progress_rate_counts_each_steps_tokens_and_shows_at_most_twice_a_second(monkeypatch):
    from experiments import run

    shown = []
    bar = type("Bar", (), {"set_postfix": lambda self, **postfix: shown.append(postfix["tok_s"])})()
    clock = iter([10.0, 10.1, 10.7, 11.0])
    monkeypatch.setattr(run.time, "perf_counter", lambda: next(clock))
    rate = run._TokenRate(bar, started=9.0)
    for count in (32, 32, 32, 32):
        rate.add(count)
    assert rate.tokens == 128 and shown == [f"{32 / 1.0:.1f}", f"{96 / 1.7:.1f}"]


@pytest.mark.slow
def test_a_run_hands_the_backend_its_rate_and_takes_it_back(tmp_path):
    from benchmarks.generation import PAPER_PROMPT
    from experiments.config import GenerateConfig, SamplingConfig
    from experiments.run import get_backend, run_generation

    counted = []
    config = GenerateConfig(backend=HFBackendConfig(), prompt=PAPER_PROMPT, out_dir=str(tmp_path), progress=False,
                            sampling=SamplingConfig(temperature=1.0, max_tokens=6, n=3))
    backend = get_backend(config)
    backend.load()
    original = backend.generate

    def generate(*args):
        for story in original(*args):
            counted.append(backend.on_tokens is not None)
            yield story

    backend.generate = generate
    summary = run_generation([config], progress=False)
    assert summary.generated == 3 and all(counted) and backend.on_tokens is None
