"""Generation throughput: hf batched against llama.cpp one story at a time.

The hf rows include the default (batch-invariant row-tiled kernels) and, for
what that guarantee costs, the same backend with ``batch_invariant=false``.

Both backends generate the same stories (the paper's prompt and sampling,
temperature 1.0, top_k 50, the same seeds and max tokens) on the embedded
SmolLM2-135M-Instruct, through the real store. Models are loaded before the
clock starts. Rounds alternate between backends so that noise from other
work on the machine hits both alike; the table reports the median round.

    .venv/bin/python -m benchmarks.generation [--stories 64] [--max-tokens 128] [--rounds 2] [--with-default-threads]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from experiments.config import GenerateConfig, HFBackendConfig, LlamaCppBackendConfig, PromptConfig, SamplingConfig
from experiments.models import resolve_dtype
from experiments.run import get_backend, run_generation

PAPER_PROMPT = PromptConfig(id="paper", messages=[{"role": "user", "content": "Write a story."}],
                            assistant_prefix="Here it is:\n\n")


def config(backend, stories: int, max_tokens: int, out_dir: Path) -> GenerateConfig:
    sampling = SamplingConfig(temperature=1.0, top_k=50, top_p=1.0, repetition_penalty=1.0,
                              max_tokens=max_tokens, n=stories, seed=0)
    return GenerateConfig(backend=backend, sampling=sampling, prompt=PAPER_PROMPT, out_dir=str(out_dir), progress=False)


def measure(backend_config, stories: int, max_tokens: int) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as out_dir:
        summary = run_generation([config(backend_config, stories, max_tokens, Path(out_dir))], progress=False)
    assert summary.generated == stories
    return summary.seconds, summary.tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stories", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--with-default-threads", action="store_true",
                        help="also time llama.cpp with llama-cpp-python's default thread count (half the cores)")
    args = parser.parse_args()

    cores = os.cpu_count() or 1
    backends = {
        f"hf batched (batch {args.batch_size}, {resolve_dtype('auto')}: the default)":
            HFBackendConfig(batch_size=args.batch_size),
        f"hf batched (batch {args.batch_size}, float32)": HFBackendConfig(batch_size=args.batch_size, dtype="float32"),
        f"hf batched (batch {args.batch_size}, {resolve_dtype('auto')}, batch_invariant=false: not reproducible)":
            HFBackendConfig(batch_size=args.batch_size, batch_invariant=False),
        f"llamacpp sequential, {cores} threads (paper's loop, our threads)": LlamaCppBackendConfig(),
        f"llamacpp sequential, {max(1, cores // 2)} thread(s) (llama-cpp-python's default)":
            LlamaCppBackendConfig(threads=max(1, cores // 2)),
    }
    if not args.with_default_threads:
        backends.pop(list(backends)[4])
    if resolve_dtype("auto") == "float32":
        backends.pop(list(backends)[1])  # the same as the default here
    for backend_config in backends.values():  # load outside the clock
        get_backend(config(backend_config, 1, 1, Path("."))).load()
    runs: dict[str, list[tuple[float, int]]] = {name: [] for name in backends}
    for _ in range(args.rounds):
        for name, backend_config in backends.items():
            runs[name].append(measure(backend_config, args.stories, args.max_tokens))

    print(f"# generation benchmark, {time.strftime('%Y-%m-%d %H:%M')} UTC, {args.stories} stories x up to "
          f"{args.max_tokens} tokens, median of {args.rounds} alternating rounds")
    print(f"| backend | stories | tokens | seconds | stories/min | tokens/s |")
    print(f"|---|---:|---:|---:|---:|---:|")
    rates = {}
    for name, results in runs.items():
        seconds = statistics.median(s for s, _ in results)
        tokens = int(statistics.median(t for _, t in results))
        rates[name] = tokens / seconds
        print(f"| {name} | {args.stories} | {tokens} | {seconds:.1f} | {args.stories / seconds * 60:.1f} | {tokens / seconds:.1f} |")
    hf_names = [name for name in backends if name.startswith("hf")]
    llama_names = [name for name in backends if name.startswith("llamacpp")]
    print()
    for hf_name in hf_names:
        for llama_name in llama_names:
            print(f"ratio {hf_name} / {llama_name} (tokens/s): {rates[hf_name] / rates[llama_name]:.2f}x")


if __name__ == "__main__":
    main()
