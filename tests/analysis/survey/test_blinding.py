"""Nothing participant-facing reveals a story's setting, seed, model or file; the key unblinds."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from analysis.survey.blinding import blinded_ids
from analysis.survey.export import find_leaks
from analysis.survey.html import json_for_script

from .synthetic import BASE_SEED, MODEL, MODEL_SHA256, export, write_run


def participant_files(result) -> dict[str, str]:
    folder = result.out_dir / "participant"
    return {path.name: path.read_text(encoding="utf-8") for path in sorted(folder.iterdir())}


def test_no_setting_seed_model_or_file_name_in_participant_files(small_export, run_dir):
    files = participant_files(small_export)
    assert set(files) == {"survey.html", "qualtrics.txt", "packets.csv", "exemplar.txt"}
    stories = [json.loads(line) for line in (run_dir / "stories.jsonl").read_text().splitlines()]
    forbidden = {MODEL, MODEL_SHA256, "stories.jsonl", str(run_dir), run_dir.name + "/", "setting-temp",
                 "temperature", "top_k", str(BASE_SEED)}
    forbidden |= {s["setting_id"] for s in stories} | {s["story_id"] for s in stories}
    forbidden |= {str(s["seed"]) for s in stories}
    for name, text in files.items():
        for secret in forbidden:
            assert secret not in text, f"{secret!r} appears in {name}"
    # temperature values as they would be printed (0.334, 1.667, ...)
    for name, text in files.items():
        if name != "survey.html":  # CSS and script numbers are not story data
            assert not re.search(r"(?<![\d.])(0\.001|0\.334|0\.667|1\.334|1\.667)(?![\d])", text), name


def test_ids_are_random_letters_and_digits(small_export):
    key = pd.read_csv(small_export.out_dir / "researcher" / "unblinding_key.csv", dtype=str, keep_default_na=False)
    assert key["blinded_id"].is_unique
    assert key["blinded_id"].str.fullmatch(r"[A-Za-z][A-Za-z0-9]{5}").all()
    assert not key["blinded_id"].isin(key["story_id"]).any()
    assert set(key["kind"]) == {"exemplar", "practice", "story"}
    assert key["survey_id"].nunique() == 1 and key["survey_id"].iloc[0] == small_export.survey.survey_id
    # the key carries what the analysis needs
    for column in ("story_id", "setting_id", "temperature", "top_p", "top_k", "model", "model_sha256", "seed"):
        assert column in key.columns
    assert not key.loc[key["kind"] != "exemplar", "setting_id"].eq("").any()


def test_every_shown_story_is_in_the_key_and_in_the_design(small_export):
    key = pd.read_csv(small_export.out_dir / "researcher" / "unblinding_key.csv", dtype=str, keep_default_na=False)
    design = pd.read_csv(small_export.out_dir / "researcher" / "design.csv", dtype=str, keep_default_na=False)
    packets = pd.read_csv(small_export.out_dir / "participant" / "packets.csv", dtype=str, keep_default_na=False)
    assert set(packets["blinded_id"]) <= set(key["blinded_id"])
    stories = packets.loc[packets["kind"] == "story"]
    merged = stories.merge(design, on=["participant", "blinded_id"], suffixes=("", "_design"))
    assert len(merged) == len(stories) == len(design) == 30
    assert (merged["position"] == merged["position_design"]).all()


def test_two_runs_with_the_same_seed_get_different_ids(tmp_path, small_export):
    other_run = write_run(tmp_path / "other", temperatures=(0.2, 0.9, 1.5))
    other = export(other_run, tmp_path / "other_survey", participants=10, stories_per_participant=3,
                   stories_per_setting=4)
    ids = lambda result: {s.blinded_id for p in result.survey.packets for s in p.stories}  # noqa: E731
    assert other.survey.survey_id != small_export.survey.survey_id
    assert not ids(other) & ids(small_export)


def test_blinded_ids_are_distinct_even_ignoring_case():
    ids = blinded_ids(2000, np.random.default_rng(0))
    assert len({i.lower() for i in ids}) == 2000


def test_leak_detector_finds_a_planted_setting_id():
    files = {"survey.html": "<p>setting-temp0.5 shown</p>", "packets.csv": "fine"}
    assert find_leaks(files, {"setting-temp0.5"}, shown_texts=["a story"]) == ["'setting-temp0.5' in survey.html"]
    # a secret that is part of a story's own text is not a leak
    assert find_leaks(files, {"setting-temp0.5"}, shown_texts=["... setting-temp0.5 ..."]) == []


@pytest.mark.parametrize("payload", [
    "</script><script>alert(1)</script>", "<!-- <script>", "a & b > c", "line\u2028separator", "</SCRIPT >",
])
def test_json_for_script_cannot_end_the_script_element(payload):
    text = json_for_script({"text": payload})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == {"text": payload}


def test_survey_html_is_self_contained_and_locked_down(small_export):
    page = (small_export.out_dir / "participant" / "survey.html").read_text()
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page).group(1)
    assert "default-src 'none'" in policy and "connect-src 'none'" in policy and "'unsafe-inline'" not in policy
    assert not re.search(r"""\s(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing loaded from anywhere
    assert "<link" not in page and "@import" not in page
    data = re.search(r'<script type="application/json" id="survey-data">(.*?)</script>', page, re.S).group(1)
    parsed = json.loads(data)
    assert sorted(parsed["packets"]) == [f"P{i:02d}" for i in range(1, 11)]
    assert len(parsed["practice"]) == 2
