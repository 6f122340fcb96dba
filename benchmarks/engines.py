"""Throughput of every way the harness can generate, on the same stories, side by side.

The rows: in-process ``hf`` (batched); in-process ``llamacpp`` one story at a
time (the paper's loop: the reference every ratio is taken to); llama.cpp's
``llama-server --parallel 4`` with ``backend.max_concurrency=4``; vLLM CPU
with ``max_concurrency`` 1, 8 and 32. All generate the paper's prompt and
sampling (temperature 1.0, top_k 50, the same seeds, the same maximum
length) on the embedded SmolLM2-135M-Instruct, through the real generate
stage and store. Servers are started with ``scripts/serve``'s code, one at a
time, so that each engine has the machine to itself; a server's start-up is
outside the clock, and so is loading an in-process model. Each case runs once
per round; rounds repeat the cases in the same order (``--rounds``), and the
table shows the median round.

Peak memory: in-process cases, the peak RSS of this process after the case
(it only grows, so read it in order); server cases, the peak RSS of the
server's processes (VmHWM, summed over its process group).

    .venv/bin/python -m benchmarks.engines [--stories 64] [--max-tokens 256] [--rounds 1]
        [--only hf llamacpp llama-server vllm] [--json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Optional

from benchmarks.common import Row, add_json_flag, peak_rss_mb, print_benchmark
from benchmarks.generation import PAPER_PROMPT
from experiments.config import (GenerateConfig, HFBackendConfig, LlamaCppBackendConfig, OpenAIBackendConfig,
                                SamplingConfig)
from experiments.run import get_backend, run_generation
from experiments.servers.cached_setup import EngineUnavailable
from experiments.servers.engines import ServeOptions, prepare
from experiments.servers.process import ServerProcess, free_port

REFERENCE = "llamacpp in process, one story at a time (the paper's loop)"


def sampling(stories: int, max_tokens: int) -> SamplingConfig:
    return SamplingConfig(temperature=1.0, top_k=50, top_p=1.0, max_tokens=max_tokens, n=stories, seed=0)


def timed_run(backend, stories: int, max_tokens: int) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as out_dir:
        config = GenerateConfig(backend=backend, sampling=sampling(stories, max_tokens), prompt=PAPER_PROMPT,
                                out_dir=out_dir, progress=False)
        summary = run_generation([config], progress=False)
    if summary.generated != stories:
        raise RuntimeError(f"{summary.generated} of {stories} stories generated")
    return summary.seconds, summary.tokens


def group_peak_rss_mb(leader_pid: int) -> Optional[float]:
    """Peak RSS (VmHWM) summed over the processes of a process group, from /proc (Linux)."""
    total_kb = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != leader_pid:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total_kb += int(line.split()[1])
        except (OSError, ValueError):
            continue
    return total_kb / 1024 if total_kb else None


def served_cases(engine: str, concurrencies: list[int], stories: int, max_tokens: int, rounds: int,
                 log_dir: Path) -> dict[str, tuple[list[tuple[float, int]], Optional[float]]]:
    """Start one engine, run its cases, stop it: {case: (runs, peak RSS MB)}."""
    port = free_port()
    launch = prepare(ServeOptions(engine, port=port, parallel=4))
    server = ServerProcess(launch.argv, launch.base_url, launch.env, log_path=log_dir / f"{engine}.log",
                           name=engine)
    results = {}
    print(f"[engines] starting {engine} (log: {server.log_path})", file=sys.stderr, flush=True)
    with server.start(launch.ready_timeout_s):
        for concurrency in concurrencies:
            backend = OpenAIBackendConfig(base_url=launch.base_url, model=launch.served_name,
                                          profile=launch.profile, max_concurrency=concurrency)
            timed_run(backend, 2, 8)  # warm-up: first-request costs (graph capture, caches) outside the clock
            case = (f"{engine} --parallel 4, max_concurrency={concurrency}" if engine == "llama-server"
                    else f"{engine}, max_concurrency={concurrency}")
            results[case] = [timed_run(backend, stories, max_tokens) for _ in range(rounds)]
        peak = group_peak_rss_mb(server.process.pid)  # the server's peak over all its cases
    return {case: (runs, peak) for case, runs in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stories", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--only", nargs="+", default=["hf", "llamacpp", "llama-server", "vllm"],
                        choices=["hf", "llamacpp", "llama-server", "vllm"])
    parser.add_argument("--vllm-concurrency", type=int, nargs="+", default=[1, 8, 32])
    add_json_flag(parser)
    args = parser.parse_args()

    cases: dict[str, tuple[list[tuple[float, int]], Optional[float]]] = {}
    notes: dict[str, str] = {}
    in_process = {"hf": ("hf in process, batched (batch 64, the default: batch-invariant)", HFBackendConfig()),
                  "llamacpp": (REFERENCE, LlamaCppBackendConfig())}
    for key in ("llamacpp", "hf"):  # the reference first
        if key in args.only:
            name, backend = in_process[key]
            get_backend(GenerateConfig(backend=backend, sampling=sampling(1, 1), prompt=PAPER_PROMPT)).load()
            runs = [timed_run(backend, args.stories, args.max_tokens) for _ in range(args.rounds)]
            cases[name] = (runs, peak_rss_mb())
            notes[name] = "peak RSS of the benchmark process so far"
    with tempfile.TemporaryDirectory() as log_dir:
        for engine, concurrencies in (("llama-server", [4]), ("vllm", args.vllm_concurrency)):
            if engine not in args.only:
                continue
            try:
                cases.update(served_cases(engine, concurrencies, args.stories, args.max_tokens, args.rounds,
                                          Path(log_dir)))
            except EngineUnavailable as error:
                print(f"[engines] {engine} skipped: {error}", file=sys.stderr)

    reference = None
    if REFERENCE in cases:
        runs = cases[REFERENCE][0]
        reference = statistics.median(t / s for s, t in runs)
    rows = []
    for name, (runs, peak) in cases.items():
        seconds = statistics.median(s for s, _ in runs)
        tokens = int(statistics.median(t for _, t in runs))
        rate = statistics.median(t / s for s, t in runs)
        ratio = f"{rate / reference:.2f}x the paper's loop" if reference else ""
        rows.append(Row("engines", name, f"{args.stories} stories x up to {args.max_tokens} tokens ({tokens} made)",
                        seconds, rate, "tokens/s", peak, "; ".join(filter(None, [ratio, notes.get(name, "")]))))
    print_benchmark("engines", rows, args.rounds, as_json=args.json)


if __name__ == "__main__":
    main()
