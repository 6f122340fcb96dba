"""A small synthetic run (RUN_DIR/stories.jsonl per the store contract) for the survey tests."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

MODEL = "SynthModelZebra-7B"
MODEL_SHA256 = hashlib.sha256(MODEL.encode()).hexdigest()
BASE_SEED = 918273645
WORDS = ("river lantern quiet merchant storm garden letter window harbor violin orchard candle mirror "
         "dragon village winter forest secret engine silver market bridge island shadow").split()


def setting_id_for(temperature: float) -> str:
    return f"setting-temp{temperature:.3f}-topk50"


def story_text(rng: random.Random) -> str:
    paragraphs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(12, 30))).capitalize() + "."
                  for _ in range(rng.randint(2, 4))]
    return "\n\n".join(paragraphs)


def write_run(run_dir: Path, temperatures=(0.001, 0.334, 0.667, 1.0, 1.334, 1.667, 2.0), per_setting: int = 8,
              greedy_duplicates: bool = False, extra_texts: dict[int, str] | None = None) -> Path:
    """Write RUN_DIR/stories.jsonl; ``extra_texts`` replaces the text of the n-th story written."""
    rng = random.Random(7)
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    number = 0
    for temperature in temperatures:
        setting_id = setting_id_for(temperature)
        greedy = story_text(rng)
        for index in range(per_setting):
            text = greedy if (greedy_duplicates and temperature == min(temperatures)) else story_text(rng)
            if extra_texts and number in extra_texts:
                text = extra_texts[number]
            lines.append({
                "story_id": hashlib.sha1(f"{temperature}/{index}".encode()).hexdigest()[:16],
                "setting_id": setting_id,
                "setting": {"temperature": temperature, "top_p": 1.0, "top_k": 50, "max_tokens": 256,
                            "seed": BASE_SEED},
                "seed": BASE_SEED + 1000 * number + 17,
                "sample_index": index,
                "backend": "hf",
                "model": MODEL,
                "model_sha256": MODEL_SHA256,
                "prompt_id": "paper",
                "prompt": "Write a story.",
                "messages": None,
                "text": text,
                "n_tokens": len(text.split()),
                "finish_reason": "stop",
                "token_logprobs": [-1.0, -2.0],
                "latency_s": 0.1,
                "created_at": "2024-01-01T00:00:00Z",
                "harness_version": "0.1.0",
            })
            number += 1
    with open(run_dir / "stories.jsonl", "w", encoding="utf-8") as handle:
        for line in lines:
            handle.write(json.dumps(line) + "\n")
    return run_dir


def export(run: Path, out: Path, **overrides):
    """Export a survey of ``run`` into ``out`` with config overrides (typed, as the CLI would)."""
    from analysis.survey.config import ExportConfig
    from analysis.survey.export import export_survey

    return export_survey(ExportConfig(run_dir=str(run), out_dir=str(out), **overrides))
