"""``python -m metrics.compute`` as a user runs it, on a small synthetic run, with the real models."""

import json
import subprocess
import sys

import pandas as pd
import pytest

pytestmark = pytest.mark.slow

TEXTS = {
    0.0: "Once upon a time, a girl named Maria found a hidden path in the woods.",
    1.0: "A lighthouse keeper wrote letters to the sea, and one night the sea wrote back.",
    1.5: "<p>The robot</p> painted <b>clouds</b> for the café owner, who paid in stories.",
}


def test_compute_command_on_a_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    lines = []
    for temperature, text in TEXTS.items():
        for index in range(2):
            lines.append({"story_id": f"{temperature}-{index}", "setting_id": f"T{temperature}",
                          "setting": {"temperature": temperature, "top_k": 50}, "sample_index": index,
                          "prompt_id": "paper", "prompt": "<|im_start|>user\nWrite a story.<|im_end|>\n"
                                                          "<|im_start|>assistant\n",
                          "text": text if index == 0 else text.upper(), "token_logprobs": [-1.0, -2.0]})
    lines.append({"story_id": "empty", "setting_id": "T1.0", "setting": {"temperature": 1.0, "top_k": 50},
                  "prompt_id": "paper", "prompt": "x", "text": "", "token_logprobs": []})
    (run / "stories.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = subprocess.run(
        [sys.executable, "-m", "metrics.compute", f"stories={run / 'stories.jsonl'}", f"out_dir={run}",
         "metrics.cache=false", "metrics.progress=false"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    frame = pd.read_parquet(run / "metrics.parquet").set_index("story_id")
    assert len(frame) == 7
    assert frame.loc["0.0-0", "prototype_cos_sim"] == pytest.approx(1.0, abs=1e-3)
    assert frame.loc["1.0-0", "perplexity"] == pytest.approx(4.4817, abs=1e-3)  # exp(1.5)
    assert frame.drop(index="empty")["perplexity_scorer"].between(1, 10_000).all()
    assert frame.loc["empty"].drop(["prototype_edit_dist_norm"]).isna().all()
    diversity = pd.read_parquet(run / "diversity.parquet")
    assert diversity["setting_id"].tolist() == ["T0.0", "T1.0", "T1.5"]
    assert diversity["n"].tolist() == [2, 3, 2]
    sidecar = json.loads((run / "metrics.json").read_text())
    assert sidecar["columns"]["perplexity_scorer"]["conditioned_on"]["prompt"] == 6
    assert "empty" in sidecar["nan"]["perplexity_scorer"]["empty text: no tokens to score"]
    # Hydra's files go under out_dir, nothing lands in the working directory
    assert (run / ".hydra" / "compute_metrics" / "config.yaml").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
