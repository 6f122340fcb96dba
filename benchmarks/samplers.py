"""What each sampler made for creative text costs: generation tokens/s against temperature alone.

For each backend (hf at batch 64, llama.cpp one story at a time) every case
runs once per round, temperature alone first, on the same stories (paper
prompt, the same seeds); a case's cost is its tokens/s over that round's
temperature-alone tokens/s, so noise from the machine hits both sides of a
ratio alike. The table reports the median round. The issue's budget: no
sampler may cost more than 15% of temperature alone on hf at batch 64.
``diagnostics`` is temperature alone with ``sampler_diagnostics`` on.

    .venv/bin/python -m benchmarks.samplers [--stories 64] [--max-tokens 128] [--rounds 3]
        [--llamacpp-stories 8] [--backends hf llamacpp]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from benchmarks.common import Row, add_json_flag, print_rows
from benchmarks.generation import PAPER_PROMPT
from experiments.config import GenerateConfig, HFBackendConfig, LlamaCppBackendConfig, SamplingConfig
from experiments.run import run_generation
BASELINE = "temperature alone"
# Each case at temperature 1.0 with pure sampling otherwise (top_k 0, top_p 1), as experiment=samplers.
CASES: dict[str, dict] = {
    BASELINE: {},
    "min_p 0.1": {"min_p": 0.1},
    "xtc 0.5 / 0.1": {"xtc_probability": 0.5, "xtc_threshold": 0.1},
    "top_n_sigma 1.0": {"top_n_sigma": 1.0},
    "dry 0.8": {"dry_multiplier": 0.8},
    "dynatemp 0.5": {"dynatemp_range": 0.5},
    "min_p 0.1, temperature first": {"min_p": 0.1, "sampler_order": ["temperature", "min_p"]},
    "diagnostics": {},
}


def generate_config(backend, case: str, stories: int, max_tokens: int, out_dir: Path) -> GenerateConfig:
    sampling = SamplingConfig(temperature=1.0, top_k=0, top_p=1.0, max_tokens=max_tokens, n=stories, seed=0,
                              **CASES[case])
    return GenerateConfig(backend=backend, sampling=sampling, prompt=PAPER_PROMPT, out_dir=str(out_dir),
                          progress=False, sampler_diagnostics=case == "diagnostics")


def measure(backend, case: str, stories: int, max_tokens: int) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as out_dir:
        summary = run_generation([generate_config(backend, case, stories, max_tokens, Path(out_dir))], progress=False)
    assert summary.generated == stories, summary
    return summary.seconds, summary.tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stories", type=int, default=64, help="hf stories per case (one batch of 64)")
    parser.add_argument("--llamacpp-stories", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--backends", nargs="+", default=["hf", "llamacpp"], choices=["hf", "llamacpp"])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    add_json_flag(parser)
    args = parser.parse_args()
    cases = [BASELINE] + [case for case in args.cases if case != BASELINE]

    rows = []
    for name in args.backends:
        backend = HFBackendConfig(batch_size=args.batch_size) if name == "hf" else LlamaCppBackendConfig()
        stories = args.stories if name == "hf" else args.llamacpp_stories
        measure(backend, BASELINE, min(stories, 4), 16)  # load the model (and build the kernel) off the clock
        rates: dict[str, list[float]] = {case: [] for case in cases}
        ratios: dict[str, list[float]] = {case: [] for case in cases}
        for _ in range(args.rounds):
            for case in cases:
                seconds, tokens = measure(backend, case, stories, args.max_tokens)
                rates[case].append(tokens / seconds)
                ratios[case].append(rates[case][-1] / rates[BASELINE][-1])
        label = f"hf batch {args.batch_size}" if name == "hf" else "llamacpp"
        for case in cases:
            ratio = statistics.median(ratios[case])
            rows.append(Row(benchmark="samplers", case=f"{label}: {case}",
                            size=f"{stories} stories x {args.max_tokens} tokens, {args.rounds} rounds",
                            throughput=round(statistics.median(rates[case]), 1), unit="tokens/s",
                            note="" if case == BASELINE else
                            f"x{ratio:.3f} of temperature alone (cost {100 * (1 - ratio):+.1f}%; rounds "
                            + ", ".join(f"{value:.3f}" for value in ratios[case]) + ")"))
    print_rows(rows, as_json=args.json, title="Sampler cost against temperature alone")


if __name__ == "__main__":
    main()
