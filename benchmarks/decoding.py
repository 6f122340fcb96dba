"""In-process decoding against vLLM CPU, on the same stories, side by side.

The rows: the ``hf`` backend's two decoders, ``static`` (the default:
continuous batching on a static cache) and ``transformers`` (the model's own
modules, the default before it), each in bfloat16 and float32; and vLLM CPU
serving the same weights with 32 concurrent requests, once through this
harness's ``backend=openai`` (what a user of the harness gets) and once with
the ``openai`` client alone (what vLLM itself delivers). Every row generates
the paper's prompt and sampling (temperature 1.0, top_k 50, the same seeds)
on the embedded SmolLM2-135M-Instruct, at each ``--max-tokens``. The ratio
column is each row's tokens/s over vLLM's through the harness at the same
length.

Each in-process case runs in a process of its own (this script with
``--case``), so its peak RSS is its own; loading the model and a warm-up are
outside the clock. vLLM is started once with ``scripts/serve``'s code
(start-up outside the clock) and its peak is the server's process group's
(VmHWM summed); ``--vllm-url`` uses a server already running instead. Each
round runs every case once, in process and served interleaved, at each
length (``--rounds``); the table shows the median round.

    .venv/bin/python -m benchmarks.decoding [--stories 32] [--max-tokens 256 512] [--rounds 1] [--json]
        [--only static transformers vllm] [--batch-size 64] [--native-only] [--vllm-url URL]
    .venv/bin/python -m benchmarks.decoding --profile-step [--rows 32] [--position 160]

``--profile-step`` prints instead where one step of the static decoder
spends its time (torch.profiler, operators by self CPU time) next to the
step's wall-clock time without the profiler.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from benchmarks.common import Row, add_json_flag, peak_rss_mb, print_benchmark
from benchmarks.engines import group_peak_rss_mb, sampling, timed_run
from benchmarks.generation import PAPER_PROMPT
from experiments.config import GenerateConfig, HFBackendConfig, OpenAIBackendConfig
from experiments.identity import setting_of, story_seed
from experiments.models import resolve_dtype

CASE_PREFIX = "DECODING-CASE "
VLLM_CONCURRENCY = 32


def in_process_cases(batch_size: int, native_only: bool = False) -> dict[str, HFBackendConfig]:
    native = resolve_dtype("auto")
    cases = {}
    for decoder, label in (("static", "the default"), ("transformers", "the default before")):
        for dtype in dict.fromkeys([native] if native_only else [native, "float32"]):
            name = f"hf, {decoder} decoder, batch {batch_size}, {dtype}" + (f" ({label})" if dtype == native else "")
            cases[name] = HFBackendConfig(batch_size=batch_size, dtype=dtype, decoder=decoder)
    return cases


def run_case(name: str, batch_size: int, stories: int, max_tokens: int) -> None:
    """In this process: load, warm up, time one case; print its result as one line."""
    from experiments.run import get_backend

    backend = in_process_cases(batch_size)[name]
    get_backend(GenerateConfig(backend=backend, sampling=sampling(1, 1), prompt=PAPER_PROMPT)).load()
    timed_run(backend, 2, 8)
    seconds, tokens = timed_run(backend, stories, max_tokens)
    print(CASE_PREFIX + json.dumps({"seconds": seconds, "tokens": tokens, "peak_rss_mb": peak_rss_mb()}), flush=True)


def case_in_subprocess(name: str, batch_size: int, stories: int, max_tokens: int) -> dict:
    command = [sys.executable, "-m", "benchmarks.decoding", "--case", name, "--batch-size", str(batch_size),
               "--stories", str(stories), "--max-tokens", str(max_tokens)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    lines = [line for line in result.stdout.splitlines() if line.startswith(CASE_PREFIX)]
    if result.returncode or not lines:
        raise RuntimeError(f"case {name!r} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(lines[-1][len(CASE_PREFIX):])


def vllm_direct(backend_config: OpenAIBackendConfig, stories: int, max_tokens: int) -> tuple[float, int]:
    """The same request bodies (the harness's own), sent 32 at a time by the openai client alone.

    (seconds, completion tokens): no store, retries or bookkeeping, so the
    gap to the harness row is what the harness costs.
    """
    from openai import OpenAI

    from experiments.backends.openai_backend import OpenAIBackend
    from experiments.backends.openai_profiles import request_parameters
    from experiments.backends.openai_requests import continues_assistant, send

    harness = OpenAIBackend(backend_config)
    text = harness.prompt_text(PAPER_PROMPT)
    endpoint = harness.endpoint_for(PAPER_PROMPT, backend_config)
    setting = sampling(stories, max_tokens)
    parameters = request_parameters(harness.profile, setting, endpoint, backend_config.logprobs,
                                    continues_assistant(text, endpoint))
    client = OpenAI(base_url=backend_config.base_url, api_key="unused", max_retries=0, timeout=600)

    def one(index: int) -> int:
        seed = story_seed(setting_of(setting), text, index)
        response = send(client, backend_config.model, endpoint, text, parameters.for_story(seed, harness.profile))
        return response.usage.completion_tokens

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(VLLM_CONCURRENCY) as pool:
        tokens = sum(pool.map(one, range(stories)))
    return time.perf_counter() - started, tokens


class VLLMCases:
    """vLLM's two rows, against a server this benchmark starts (or one already running at ``url``)."""

    HARNESS = f"vLLM CPU, {VLLM_CONCURRENCY} concurrent requests, through backend=openai"
    DIRECT = f"vLLM CPU, {VLLM_CONCURRENCY} concurrent requests, openai client alone"

    def __init__(self, log_dir: Path, url: Optional[str] = None):
        from experiments.servers.engines import SERVED_NAME, ServeOptions, prepare
        from experiments.servers.process import ServerProcess, free_port

        self.server = None
        if url:
            self.backend = OpenAIBackendConfig(base_url=url, model=SERVED_NAME, profile="vllm",
                                               max_concurrency=VLLM_CONCURRENCY)
            return
        launch = prepare(ServeOptions("vllm", port=free_port()))
        self.server = ServerProcess(launch.argv, launch.base_url, launch.env, log_path=log_dir / "vllm.log",
                                    name="vllm")
        print(f"[decoding] starting vllm (log: {self.server.log_path})", file=sys.stderr, flush=True)
        self.server.start(launch.ready_timeout_s)
        self.backend = OpenAIBackendConfig(base_url=launch.base_url, model=launch.served_name, profile=launch.profile,
                                           max_concurrency=VLLM_CONCURRENCY)

    def __enter__(self) -> "VLLMCases":
        timed_run(self.backend, 2, 8)  # warm-up outside the clock
        return self

    def __exit__(self, *exc) -> None:
        if self.server is not None:
            self.server.stop()

    def peak_rss_mb(self) -> Optional[float]:
        return group_peak_rss_mb(self.server.process.pid) if self.server is not None else None

    def run(self, stories: int, max_tokens: int) -> dict[str, dict]:
        seconds, tokens = timed_run(self.backend, stories, max_tokens)
        harness = {"seconds": seconds, "tokens": tokens}
        seconds, tokens = vllm_direct(self.backend, stories, max_tokens)
        return {self.HARNESS: harness, self.DIRECT: {"seconds": seconds, "tokens": tokens}}


def profile_step(rows: int, position: int) -> None:
    """One static-decoder step of ``rows`` stories at ``position``: wall clock, then torch.profiler's table."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from experiments.backends.static_decoder import STATIC_ROWS_PER_TILE, StaticDecoder, cache_length
    from experiments.models import embedded_gguf_path, load_transformers_causal_lm

    dtype = resolve_dtype("auto")
    model, _ = load_transformers_causal_lm(embedded_gguf_path(), dtype)
    decoder = StaticDecoder(model, STATIC_ROWS_PER_TILE)
    decoder.allocate(rows, cache_length(position + 1, 0))
    tokens, positions = torch.full((rows,), 504), torch.full((rows,), position)
    logits = torch.empty((rows, model.config.vocab_size))
    for _ in range(3):
        decoder.step(tokens, positions, out=logits)
    started = time.perf_counter()
    for _ in range(10):
        decoder.step(tokens, positions, out=logits)
    seconds = (time.perf_counter() - started) / 10
    print(f"# one static-decoder step: {rows} rows at position {position}, {dtype}, {torch.get_num_threads()} threads: "
          f"{seconds * 1e3:.1f} ms ({rows / seconds:.0f} tokens/s), mean of 10 without the profiler\n")
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        decoder.step(tokens, positions, out=logits)
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stories", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--only", nargs="+", default=["static", "transformers", "vllm"],
                        choices=["static", "transformers", "vllm"])
    parser.add_argument("--native-only", action="store_true", help="in process, only the default precision")
    parser.add_argument("--vllm-url", help="a vLLM server already running (scripts/serve vllm) instead of starting one")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # one in-process case, in a process of its own
    parser.add_argument("--profile-step", action="store_true", help="profile one step of the static decoder")
    parser.add_argument("--rows", type=int, default=32, help="with --profile-step: stories in the step")
    parser.add_argument("--position", type=int, default=160, help="with --profile-step: their position")
    add_json_flag(parser)
    args = parser.parse_args()
    if args.profile_step:
        profile_step(args.rows, args.position)
        return
    if args.case:
        run_case(args.case, args.batch_size, args.stories, args.max_tokens[0])
        return

    results: dict[tuple[str, int], list[dict]] = {}
    names = [name for name, backend in in_process_cases(args.batch_size, args.native_only).items()
             if backend.decoder in args.only]
    with contextlib.ExitStack() as stack:
        vllm = None
        if "vllm" in args.only:
            from experiments.servers.cached_setup import EngineUnavailable

            try:
                vllm = stack.enter_context(VLLMCases(Path(stack.enter_context(tempfile.TemporaryDirectory())),
                                                     args.vllm_url))
            except EngineUnavailable as error:
                print(f"[decoding] vllm skipped: {error}", file=sys.stderr)
        # Rounds interleave every case, in process and served, so that the machine's
        # drift hits all alike (an idle vLLM server measured 2% of a core).
        for _ in range(args.rounds):
            for max_tokens in args.max_tokens:
                for name in names:
                    print(f"[decoding] {name}, up to {max_tokens} tokens", file=sys.stderr, flush=True)
                    results.setdefault((name, max_tokens), []).append(
                        case_in_subprocess(name, args.batch_size, args.stories, max_tokens))
                if vllm is not None:
                    print(f"[decoding] vllm, up to {max_tokens} tokens", file=sys.stderr, flush=True)
                    for name, run in vllm.run(args.stories, max_tokens).items():
                        results.setdefault((name, max_tokens), []).append(run)
        if vllm is not None:
            peak = vllm.peak_rss_mb()
            for (name, _), runs in results.items():
                if name.startswith("vLLM"):
                    for run in runs:
                        run["peak_rss_mb"] = peak

    def rate(runs: list[dict]) -> float:
        return statistics.median(run["tokens"] / run["seconds"] for run in runs)

    reference = {max_tokens: rate(runs) for (name, max_tokens), runs in results.items()
                 if name.startswith("vLLM") and name.endswith("backend=openai")}
    rows = []
    for max_tokens in args.max_tokens:
        for (name, length), runs in results.items():
            if length != max_tokens:
                continue
            tokens = int(statistics.median(run["tokens"] for run in runs))
            ratio = f"{rate(runs) / reference[length]:.2f}x vLLM through the harness" if length in reference else ""
            peak: Optional[float] = max(run["peak_rss_mb"] or 0 for run in runs) or None
            rows.append(Row("decoding", name, f"{args.stories} stories x up to {length} tokens ({tokens} made)",
                            statistics.median(run["seconds"] for run in runs), rate(runs), "tokens/s", peak, ratio))
    print_benchmark("decoding", rows, args.rounds, as_json=args.json)


if __name__ == "__main__":
    main()
