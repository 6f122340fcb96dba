"""Peak memory of reading a 10,000-story store: resume, iterate, stories_frame.

    .venv/bin/python -m benchmarks.memory [--stories 10000] [--no-tracemalloc] [--json]

A synthetic store is written once (the contract's fields, ~2,500-character
texts, ~550 token log-probs per story, so a line is about 15 KB as the
generate stage writes it). Each case then runs in a fresh process, so the peak
RSS (``ru_maxrss``) is its own; that includes the interpreter, pandas and
numpy (the "imports only" row). The case runs a second time under tracemalloc,
started after the imports, for the peak of what the case itself allocated
(Python objects and numpy/pandas buffers).

"iterate (streaming)" is the bare loop over lines (``iter_lines`` below), the
floor that ``iter_stories`` is measured against. ``stories_frame`` is the
store's one table (``experiments.store.story_table``, which metrics and
analysis read through): streamed, without log-probs; "(with log-probs)" is
the table the metrics stage reads, one float64 array of log-probs per story.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import Row, add_json_flag, peak_rss_mb, print_rows

REPO = Path(__file__).resolve().parents[1]
WORDS = ("the a girl boy sea moon tree king queen robot dragon village forest path river city night light storm "
         "ship letter keeper garden door window mountain voice song secret map clock star fire stone found walked "
         "whispered remembered built opened lost carried painted waited old small quiet bright strange golden "
         "broken hidden ancient gentle curious brave and but then because while when after before").split()
TEMPERATURES = (0.001, 0.334, 0.667, 1.0, 1.334, 1.667, 2.0)
PROMPT = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
          "<|im_start|>user\nWrite a story.<|im_end|>\n<|im_start|>assistant\nHere it is:\n\n")


def write_store(path: Path, n: int, seed: int = 0) -> None:
    """n stories with every contract field, written in one pass (the real store fsyncs per story)."""
    rng = np.random.default_rng(seed)
    with open(path, "w", encoding="utf-8") as handle:
        for index in range(n):
            temperature = TEMPERATURES[index % len(TEMPERATURES)]
            n_tokens = int(rng.integers(450, 650))
            words = rng.choice(WORDS, size=n_tokens * 4 // 5)
            story = {
                "story_id": f"{index:016x}", "setting_id": f"setting-{temperature}",
                "setting": {"temperature": temperature, "top_p": 1.0, "top_k": 50, "max_tokens": 1024, "stop": [],
                            "seed": 0},
                "sent_parameters": None, "server_response": None,
                "seed": int(rng.integers(0, 2**62)), "sample_index": index // len(TEMPERATURES),
                "backend": "llamacpp", "model": "SmolLM2-135M-Instruct.Q4_1.gguf", "model_sha256": "0" * 64,
                "prompt_id": "paper", "prompt": PROMPT,
                "messages": [{"role": "user", "content": "Write a story."}],
                "text": " ".join(words).capitalize() + ".",
                "n_tokens": n_tokens, "finish_reason": "stop",
                # float64 log-probs, as llama.cpp's are once in Python: ~19 characters each in JSON
                "token_logprobs": (-np.abs(rng.normal(0.0, 2.5, n_tokens))).tolist(),
                "latency_s": round(float(rng.uniform(2, 10)), 4), "created_at": "2026-01-01T00:00:00Z",
                "harness_version": "0.1.0",
            }
            handle.write(json.dumps(story, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------- the cases

def iter_lines(path: Path):
    """Stories one line at a time, nothing checked: the floor for iter_stories."""
    with open(path, "rb") as handle:
        for raw in handle:
            if raw.strip():
                yield json.loads(raw)


def _frame_note(frame) -> str:
    usage = frame.memory_usage(deep=True, index=False).sort_values(ascending=False) / 1024**2
    top = ", ".join(f"{name} {mb:.0f}" for name, mb in usage.head(4).items())
    return f"frame {usage.sum():.0f} MB deep ({top} MB)"


def run_case(case: str, path: Path, traced: bool = False) -> dict:
    """One case in this process; returns what it measured."""
    import tracemalloc

    import pandas as pd  # noqa: F401  (imported before measuring: every case pays for it)

    from experiments.store import StoryStore, iter_stories, read_stories, stories_frame

    if traced:
        tracemalloc.start()
    started = time.perf_counter()
    note = ""
    if case == "imports only":
        pass
    elif case == "resume: StoryStore.existing_ids":
        note = f"{len(StoryStore(path.parent).existing_ids())} ids"
    elif case == "iter_stories":
        note = f"{sum(len(s['token_logprobs']) for s in iter_stories(path))} log-probs seen"
    elif case == "iterate (streaming)":
        note = f"{sum(len(s['token_logprobs']) for s in iter_lines(path))} log-probs seen"
    elif case == "read_stories (everything)":
        stories = read_stories(path)
        note = f"{len(stories)} dicts with texts and log-probs"
    elif case == "stories_frame":
        frame = stories_frame(path)
        note = f"{frame.shape[0]} x {frame.shape[1]}; {_frame_note(frame)}"
    elif case == "stories_frame (with log-probs)":
        frame = stories_frame(path, with_logprobs=True)
        note = f"{frame.shape[0]} x {frame.shape[1]}; {_frame_note(frame)}"
    else:
        raise ValueError(f"unknown case {case!r}")
    seconds = time.perf_counter() - started
    traced_peak = tracemalloc.get_traced_memory()[1] / 1024**2 if traced else None
    return {"seconds": seconds, "peak_mb": peak_rss_mb(), "traced_peak_mb": traced_peak, "note": note}


CASES = ["imports only", "resume: StoryStore.existing_ids", "iter_stories", "iterate (streaming)",
         "read_stories (everything)", "stories_frame", "stories_frame (with log-probs)"]


def _child(case: str, path: Path, traced: bool) -> dict:
    command = [sys.executable, "-m", "benchmarks.memory", "--child", case, str(path)]
    if traced:
        command.append("--traced")
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"case {case!r} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stories", type=int, default=10_000)
    parser.add_argument("--no-tracemalloc", action="store_true", help="skip the second, traced run of each case")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument("--traced", action="store_true", help=argparse.SUPPRESS)
    add_json_flag(parser)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(run_case(args.child[0], Path(args.child[1]), traced=args.traced)))
        return

    with tempfile.TemporaryDirectory(prefix="bench-memory-") as folder:
        path = Path(folder) / "stories.jsonl"
        started = time.perf_counter()
        write_store(path, args.stories)
        file_mb = path.stat().st_size / 1024**2
        size = f"{args.stories:,} stories, {file_mb:.0f} MB file"
        print(f"wrote {size} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        rows = []
        for case in CASES:
            result = _child(case, path, traced=False)
            notes = [result["note"]] if result["note"] else []
            if not args.no_tracemalloc and case != "imports only":
                traced = _child(case, path, traced=True)
                notes.insert(0, f"held by the case (tracemalloc): {traced['traced_peak_mb']:.1f} MB")
            note = "; ".join(notes)
            rows.append(Row("memory", case, size, seconds=result["seconds"],
                            throughput=args.stories / result["seconds"] if case != "imports only" else None,
                            unit="stories/s", peak_rss_mb=result["peak_mb"], note=note))
            print(f"  {case}: peak {result['peak_mb']:.0f} MB", file=sys.stderr)
    print_rows(rows, as_json=args.json, title=f"peak memory, {size}")


if __name__ == "__main__":
    main()
