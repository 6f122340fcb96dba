"""The OpenAI-compatible backend: its overhead over a plain openai loop, and throughput by concurrency.

Starts llama-cpp-python's server (``scripts/serve llama-cpp-python``) with the embedded SmolLM2 on loopback
(or uses ``--base-url`` and ``--model``), then:

1. Overhead at concurrency 1. Each round sends the same requests (the same
   body, the same per-story seeds, so the server does the same work) three
   ways: a plain sequential loop of the openai client; the backend's
   ``generate`` (worker thread, pacer, retry wrapper, parsing); and the whole
   generate stage (``run_generation``: planning, manifests, the fsynced
   store). The three alternate order from round to round, so load from other
   work on the machine hits them alike; the ratio is taken per round and the
   median reported. Target: at most 1.05.
2. Throughput at concurrency 1, 2 and 4, interleaved the same way.
   llama-cpp-python's server runs one request at a time (a global lock around
   its model in llama_cpp/server/app.py), so more concurrency can only hide
   the client's and HTTP's time between requests.

    .venv/bin/python -m benchmarks.openai_backend [--stories 8] [--max-tokens 32] [--rounds 5] [--json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import Row, add_json_flag, print_rows
from experiments.backends.base import GeneratedStory, StoryRequest
from experiments.backends.openai_backend import OpenAIBackend
from experiments.backends.openai_profiles import profile_of, request_parameters
from experiments.config import Endpoint, GenerateConfig, OpenAIBackendConfig, PromptConfig, SamplingConfig
from experiments.identity import setting_of, story_seed
from experiments.run import release_backends, run_generation
from experiments.servers.engines import ServeOptions, prepare
from experiments.servers.process import ServerProcess, free_port

MODEL_ALIAS = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = PromptConfig(id="story", messages=[{"role": "user", "content": "Write a story."}])


def start_server() -> ServerProcess:
    """llama-cpp-python's server with the embedded model, as ``scripts/serve llama-cpp-python`` starts it."""
    launch = prepare(ServeOptions("llama-cpp-python", port=free_port()))
    server = ServerProcess(launch.argv, launch.base_url, launch.env, log_path=Path(tempfile.mkdtemp()) / "server.log",
                           name=launch.engine)
    return server.start(launch.ready_timeout_s)


class Workload:
    def __init__(self, base_url: str, model: str, stories: int, max_tokens: int):
        self.base_url, self.model = base_url, model
        self.sampling = SamplingConfig(temperature=1.0, top_k=50, max_tokens=max_tokens, n=stories, seed=0)
        self.backend_config = self.config(1)  # the whole stage's arm runs at concurrency 1 too
        self.prompt_text = OpenAIBackend(self.backend_config).prompt_text(PROMPT)
        setting = setting_of(self.sampling)
        self.seeds = [story_seed(setting, self.prompt_text, index) for index in range(stories)]

    def config(self, concurrency: int) -> OpenAIBackendConfig:
        return OpenAIBackendConfig(base_url=self.base_url, model=self.model, profile="llamacpp",
                                   max_concurrency=concurrency)

    def backend(self, concurrency: int) -> OpenAIBackend:
        backend = OpenAIBackend(self.config(concurrency))
        backend.prompt_text(PROMPT)
        backend.load()
        return backend

    def requests(self) -> list[StoryRequest]:
        return [StoryRequest(f"s{i}", i, seed, self.prompt_text) for i, seed in enumerate(self.seeds)]


def plain_loop(workload: Workload, client) -> tuple[float, list[str], int]:
    """What a researcher would write by hand: one request after another, the same bodies."""
    parameters = request_parameters(profile_of("llamacpp"), workload.sampling, Endpoint.chat, logprobs=True)
    messages = [dict(message) for message in PROMPT.messages]
    started = time.perf_counter()
    texts, tokens = [], 0
    for seed in workload.seeds:
        response = client.chat.completions.create(model=workload.model, messages=messages, seed=seed,
                                                  extra_body=parameters.extra_body, **parameters.standard)
        texts.append(response.choices[0].message.content)
        tokens += response.usage.completion_tokens
    return time.perf_counter() - started, texts, tokens


def harness_generate(workload: Workload, backend: OpenAIBackend) -> tuple[float, list[str], int]:
    started = time.perf_counter()
    stories = list(backend.generate(workload.requests(), workload.sampling))
    seconds = time.perf_counter() - started
    assert all(isinstance(story, GeneratedStory) for story in stories), stories
    stories.sort(key=lambda story: story.request.sample_index)
    return seconds, [story.text for story in stories], sum(story.n_tokens for story in stories)


def harness_stage(workload: Workload) -> tuple[float, list[str], int]:
    from experiments.store import read_stories

    with tempfile.TemporaryDirectory(prefix="bench-openai-") as out_dir:
        config = GenerateConfig(backend=workload.backend_config, sampling=workload.sampling, prompt=PROMPT,
                                out_dir=out_dir, progress=False)
        started = time.perf_counter()
        summary = run_generation([config], progress=False)
        seconds = time.perf_counter() - started
        stories = sorted(read_stories(Path(out_dir) / "stories.jsonl"), key=lambda story: story["sample_index"])
    assert summary.complete and summary.generated == len(workload.seeds)
    return seconds, [story["text"] for story in stories], summary.tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stories", type=int, default=8, help="requests per round and arm")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--base-url", help="an already running server (default: start llama_cpp.server)")
    parser.add_argument("--model", default=MODEL_ALIAS)
    add_json_flag(parser)
    args = parser.parse_args()

    server = None
    if args.base_url is None:
        server = start_server()
        args.base_url = server.base_url
    try:
        run(args)
    finally:
        release_backends()
        if server is not None:
            server.stop()


def run(args) -> None:
    from openai import OpenAI

    workload = Workload(args.base_url, args.model, args.stories, args.max_tokens)
    client = OpenAI(base_url=args.base_url, api_key=os.environ.get("OPENAI_API_KEY") or "no-key", max_retries=0)
    backends = {concurrency: workload.backend(concurrency) for concurrency in (1, 2, 4)}
    plain_loop(workload, client)  # warm up the server (its first request formats the chat template, fills caches)
    harness_stage(workload)  # and the stage's own first-time costs (backend cache, package versions)

    overhead_arms = {
        "plain openai loop": lambda: plain_loop(workload, client),
        "backend.generate": lambda: harness_generate(workload, backends[1]),
        "generate stage (run_generation)": lambda: harness_stage(workload),
    }
    concurrency_arms = {c: (lambda c=c: harness_generate(workload, backends[c])) for c in (2, 4)}
    results: dict[str, list[tuple[float, int]]] = {name: [] for name in overhead_arms}
    throughput: dict[int, list[tuple[float, int]]] = {c: [] for c in (2, 4)}
    reference_texts = None
    for round_index in range(args.rounds):
        names = list(overhead_arms) if round_index % 2 == 0 else list(reversed(overhead_arms))
        for name in names:
            seconds, texts, tokens = overhead_arms[name]()
            reference_texts = reference_texts or texts
            assert texts == reference_texts, f"{name}: different stories for the same seeds; the comparison is unfair"
            results[name].append((seconds, tokens))
        for concurrency in (2, 4) if round_index % 2 == 0 else (4, 2):
            seconds, texts, tokens = concurrency_arms[concurrency]()
            assert sorted(texts) == sorted(reference_texts)
            throughput[concurrency].append((seconds, tokens))

    plain = [seconds for seconds, _ in results["plain openai loop"]]
    if args.json:
        print_rows(benchmark_rows(args, results, throughput, plain), as_json=True)
        return
    print(f"# openai backend benchmark, {time.strftime('%Y-%m-%d %H:%M')} UTC: llama_cpp.server (SmolLM2-135M Q4_1, "
          f"chat, n_ctx 2048, default threads) on loopback; {args.stories} stories x {args.max_tokens} tokens "
          f"per arm and round; {args.rounds} interleaved rounds; the same seeds give the same stories in every arm")
    print("\n## overhead at concurrency 1 (ratio = arm / plain loop in the same round)")
    print("| arm | median s/round | median extra s/round | median ratio | min ratio | max ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, runs in results.items():
        ratios = [seconds / base for (seconds, _), base in zip(runs, plain)]
        extra = statistics.median(seconds - base for (seconds, _), base in zip(runs, plain))
        print(f"| {name} | {statistics.median(s for s, _ in runs):.3f} | {extra:+.3f} | "
              f"{statistics.median(ratios):.3f} | {min(ratios):.3f} | {max(ratios):.3f} |")

    print("\n## throughput by concurrency (the server runs 1 request at a time)")
    print("| max_concurrency | median s/round | stories/s | tokens/s | vs concurrency 1 |")
    print("|---:|---:|---:|---:|---:|")
    by_concurrency = {1: results["backend.generate"], **throughput}
    base_rate = None
    for concurrency, runs in by_concurrency.items():
        seconds = statistics.median(s for s, _ in runs)
        tokens = statistics.median(t for _, t in runs)
        base_rate = base_rate or tokens / seconds
        print(f"| {concurrency} | {seconds:.3f} | {args.stories / seconds:.2f} | {tokens / seconds:.1f} | "
              f"{tokens / seconds / base_rate:.2f}x |")



def benchmark_rows(args, results, throughput, plain) -> list[Row]:
    """The same numbers as rows for benchmarks/run."""
    size = f"{args.stories} stories x {args.max_tokens} tokens, {args.rounds} rounds"
    rows = []
    for name, runs in results.items():
        ratios = [seconds / base for (seconds, _), base in zip(runs, plain)]
        seconds = statistics.median(s for s, _ in runs)
        rows.append(Row("openai_backend", f"{name}, concurrency 1", size, seconds,
                        statistics.median(t for _, t in runs) / seconds, "tokens/s",
                        note=f"ratio to the plain loop: median {statistics.median(ratios):.3f} "
                             f"({min(ratios):.3f}-{max(ratios):.3f}); target <= 1.05"))
    for concurrency, runs in throughput.items():
        seconds = statistics.median(s for s, _ in runs)
        rows.append(Row("openai_backend", f"backend.generate, max_concurrency {concurrency}", size, seconds,
                        statistics.median(t for _, t in runs) / seconds, "tokens/s",
                        note="llama_cpp.server runs one request at a time"))
    return rows

if __name__ == "__main__":
    main()
