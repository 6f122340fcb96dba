"""The judge stage: judgments per second, in process and through a server at two concurrencies.

A judgment is one story rated on the four criteria: a prompt of the survey's
wording, the exemplar and the story (about 520 tokens of SmolLM2's), and an
answer of about 30 tokens under the answer's JSON schema. Each arm calls the
stage's own functions (``analysis.judge.run``: ``build_judge``,
``plan_judgments``, ``judge_stories``) with a fresh judgments store per run,
so every judgment is asked and nothing is reused; the judge's backend is
loaded once per arm, before the timing, as a run loads it once for all its
judgments. Every run (each arm, each round, the warm-up) judges stories no
other run judged, each opening with its own tag: llama-server keeps the
prompts it has seen (``cache_prompt``), and the same prompts again would be
answered from that cache. What it can still reuse is what every judgment of a
real run shares too: the prompt up to the first text. The in-process backend
evaluates every prompt from scratch.

1. The embedded SmolLM2-135M judge in process (llama-cpp-python, its grammar
   and every token's top 20 alternatives for the probability-weighted score),
   the ``judge=embedded`` default.
2. The same judgments through the OpenAI backend against llama.cpp's
   llama-server (``scripts/serve llama-server --parallel 8``, the embedded
   model, on loopback) at ``judge.max_concurrency`` 1 and 8. The two arms
   alternate (A B, then B A, ...) so load from other work on the machine hits
   them alike; the ratio of their rates is taken per round and its median
   reported. With 8 slots, llama-server decodes the requests together; on a
   CPU the gain is bounded by its cores, since prompt processing, most of a
   judgment's work, is compute-bound.

Every arm must store every judgment ok (the schema is enforced); a judgment
the server did not answer fails the benchmark rather than inflate the rate.

    .venv/bin/python -m benchmarks.judge [--stories 6] [--rounds 3] [--base-url URL] [--json]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd

from benchmarks.common import Row, add_json_flag, peak_rss_mb, print_benchmark

EXEMPLAR = "A girl walked into the forest. She found a small house and a kind old woman who gave her tea."
STORY_TEXTS = [
    "A fox found a lantern in the snow. It lit the way home for a lost owl, and the two became friends.",
    "The robot painted the sunset every evening until the town forgot it was a machine.",
    "A girl planted a seed in the cracked road. By spring the whole street was a garden.",
    "The old boat sailed once more, carrying the village children to see the whales.",
    "He wrote letters to the moon. One night the moon wrote back, in silver ink.",
    "The baker's bread rose so high it lifted the bakery into the clouds.",
]
PARALLEL = 8  # llama-server's slots, and the higher concurrency


def stories_frame(count: int, tag: str) -> pd.DataFrame:
    """``count`` short stories no other run judges: each opens with ``tag`` and its number."""
    texts = [f"{tag}.{i}. {STORY_TEXTS[i % len(STORY_TEXTS)]}" for i in range(count)]
    return pd.DataFrame({"story_id": [f"s{i}" for i in range(count)], "text": texts,
                         "temperature": [float("nan")] * count})


class JudgeArm:
    """One judge, loaded once; ``run`` asks every judgment of some stories into a fresh store."""

    def __init__(self, config, name: str, count: int):
        from analysis.judge.rubric import rubric_version
        from analysis.judge.run import build_judge

        self.judge = build_judge(config, 0)
        self.rubric = rubric_version()
        self.name, self.count = name, count
        self.judge.backend.load()

    def run(self, round_name: str) -> float:
        from analysis.judge.run import JUDGMENTS_FILE, judge_stories, plan_judgments, read_judgments
        from experiments.store import StoryStore

        stories = stories_frame(self.count, f"{self.name}.{round_name}")
        planned = plan_judgments([self.judge], stories, EXEMPLAR, self.rubric, repeats=1, base_seed=0)
        with tempfile.TemporaryDirectory(prefix="bench-judge-") as out_dir:
            store = StoryStore(out_dir, JUDGMENTS_FILE, key="judgment_id")
            started = time.perf_counter()
            [outcome] = judge_stories([self.judge], planned, stories, EXEMPLAR, self.rubric, store,
                                      max_attempts=3, progress=False)
            seconds = time.perf_counter() - started
            records = read_judgments(Path(out_dir) / JUDGMENTS_FILE)
        ok = sum(record["status"] == "ok" for record in records)
        assert outcome.unanswered == 0 and ok == len(planned), \
            f"{self.judge.name}: {ok} of {len(planned)} ok, {outcome.unanswered} unanswered; the rate would lie"
        return seconds

    def close(self) -> None:
        self.judge.backend.close()


def embedded_rows(args) -> list[Row]:
    from analysis.judge.config import JudgeConfig

    arm = JudgeArm(JudgeConfig(), "E", args.stories)
    try:
        arm.run("warm-up")  # the first prompt fills llama.cpp's buffers
        seconds = statistics.median(arm.run(f"R{index}") for index in range(args.rounds))
        structured, alternatives = arm.judge.structured, arm.judge.sampling.top_logprobs
    finally:
        arm.close()
    return [Row("judge", "embedded judge in process (llamacpp)", f"{args.stories} judgments, {args.rounds} rounds",
                seconds, args.stories / seconds, "judgments/s", peak_rss_mb(),
                note=f"schema by {structured}, top {alternatives} alternatives per token; median round")]


def start_llama_server():
    """llama-server with the embedded model and 8 slots, as ``scripts/serve llama-server --parallel 8``."""
    from experiments.servers.engines import ServeOptions, prepare
    from experiments.servers.process import ServerProcess, free_port

    launch = prepare(ServeOptions("llama-server", port=free_port(), parallel=PARALLEL))
    server = ServerProcess(launch.argv, launch.base_url, launch.env, log_path=Path(tempfile.mkdtemp()) / "server.log",
                           name=launch.engine)
    return server.start(launch.ready_timeout_s)


def server_rows(args, base_url: str) -> list[Row]:
    from analysis.judge.config import JudgeConfig
    from experiments.servers.engines import SERVED_NAME

    arms = {concurrency: JudgeArm(JudgeConfig(backend="openai", base_url=base_url, model=args.model or SERVED_NAME,
                                              profile="llamacpp_server", max_concurrency=concurrency),
                                  f"C{concurrency}", args.stories)
            for concurrency in (1, PARALLEL)}
    seconds: dict[int, list[float]] = {concurrency: [] for concurrency in arms}
    try:
        for arm in arms.values():
            arm.run("warm-up")  # the server's first request formats the chat template
        for round_index in range(args.rounds):
            order = list(arms) if round_index % 2 == 0 else list(reversed(arms))
            for concurrency in order:
                seconds[concurrency].append(arms[concurrency].run(f"R{round_index}"))
        structured = arms[1].judge.structured
    finally:
        for arm in arms.values():
            arm.close()
    ratios = [one / many for one, many in zip(seconds[1], seconds[PARALLEL])]  # rate at 8 over rate at 1
    size = f"{args.stories} judgments, {args.rounds} rounds"
    rows = [Row("judge", f"llama-server --parallel {PARALLEL}, max_concurrency {concurrency}", size,
                statistics.median(runs), args.stories / statistics.median(runs), "judgments/s",
                note=f"openai backend, profile llamacpp_server, schema by {structured}; median round")
            for concurrency, runs in seconds.items()]
    rows.append(Row("judge", f"max_concurrency {PARALLEL} / 1", size, None, statistics.median(ratios), "x",
                    note=f"per-round ratio of the rates: median {statistics.median(ratios):.2f} "
                         f"({min(ratios):.2f}-{max(ratios):.2f}), arms interleaved"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stories", type=int, default=6, help="judgments per run (one per story)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--base-url", help=f"an already running llama-server with --parallel {PARALLEL} "
                                           "(default: start one)")
    parser.add_argument("--model", help="the model name it serves (default: the embedded model's)")
    parser.add_argument("--skip-server", action="store_true", help="the in-process judge only")
    add_json_flag(parser)
    args = parser.parse_args()

    rows = embedded_rows(args)
    if not args.skip_server:
        server = None if args.base_url else start_llama_server()
        try:
            rows += server_rows(args, args.base_url or server.base_url)
        finally:
            if server is not None:
                server.stop()
    print_benchmark("judge", rows, args.rounds, as_json=args.json)


if __name__ == "__main__":
    main()
