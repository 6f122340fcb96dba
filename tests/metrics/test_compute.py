import json
import math

import numpy as np
import pandas as pd
import pytest

import metrics.compute as compute_module
from metrics.compute import compute_metrics, compute_story_metrics
from metrics.config import ComputeMetricsConfig, EditDistanceConfig
from metrics.inputs import InputError
from tests.metrics.fakes import BagOfWordsEmbedder, ConstantScorer, quiet_config

PAPER_COLUMNS = ["perplexity", "prototype_cos_sim", "prototype_edit_dist_norm", "pca_x", "pca_y"]
PROTOTYPE = "Once upon a time a girl named Maria found a hidden path in the woods."


def _stories(**columns):
    texts = columns.pop("text")
    return pd.DataFrame({"story_id": [f"s{i}" for i in range(len(texts))], "text": texts, **columns})


def test_columns_are_story_id_and_one_per_metric(embedder, scorer):
    stories = _stories(text=[PROTOTYPE, "A robot learned to paint the sea.", "Maria found a path."],
                       token_logprobs=[[-1.0, -3.0], [-0.5], None])
    frame, sidecar = compute_story_metrics(stories, [PROTOTYPE, "Another exemplar about the sea."],
                                           quiet_config(), embedder=embedder, scorer=scorer)
    assert list(frame.columns) == [
        "story_id", "perplexity", "mean_entropy_before", "mean_entropy_after", "mean_entropy_cut",
        "mean_candidates_kept", "perplexity_scorer", "prototype_cos_sim", "exemplar_cos_sim_max",
        "exemplar_cos_sim_mean", "prototype_edit_dist_norm", "exemplar_edit_dist_norm_min",
        "exemplar_edit_dist_norm_max", "exemplar_edit_dist_norm_mean", "pca_x", "pca_y"]
    assert set(PAPER_COLUMNS) <= set(frame.columns)
    assert frame["perplexity"][0] == pytest.approx(math.exp(2.0))
    assert frame["perplexity"][1] == pytest.approx(math.exp(0.5))
    assert math.isnan(frame["perplexity"][2])
    # the first exemplar is the prototype: the identical story is at distance 0, similarity 1
    assert frame["prototype_cos_sim"][0] == pytest.approx(1.0)
    assert frame["prototype_edit_dist_norm"][0] == 0.0
    assert frame["exemplar_cos_sim_max"][0] == pytest.approx(1.0)
    assert frame["exemplar_edit_dist_norm_min"][0] == 0.0
    assert np.isfinite(frame[["pca_x", "pca_y"]].to_numpy()).all()
    assert sidecar["exemplars"]["prototype"] == ["exemplar_0"]
    no_diagnostics = {"input has no sampler_diagnostics field": ["s0", "s1", "s2"]}
    assert sidecar["nan"] == {
        "perplexity": {"no token_logprobs stored (the backend could not give them)": ["s2"]},
        **{column: no_diagnostics for column in ("mean_entropy_before", "mean_entropy_after", "mean_entropy_cut",
                                                 "mean_candidates_kept")}}
    assert len(sidecar["pca"]["explained_variance_ratio"]) == 2
    assert set(sidecar["pca"]["exemplar_coordinates"]) == {"exemplar_0", "exemplar_1"}


def test_edit_distance_to_the_prototype_by_hand(embedder):
    # [Maria, found, a, path, .] vs [Maria, found, the, path, .]: 1 substitution of 5
    stories = _stories(text=["Maria found the path."])
    frame, _ = compute_story_metrics(stories, ["Maria found a path."], quiet_config(enabled=["edit_dist"]),
                                     embedder=embedder)
    assert frame["prototype_edit_dist_norm"][0] == pytest.approx(1 / 5)
    # a single exemplar is the whole set
    assert frame["exemplar_edit_dist_norm_mean"][0] == pytest.approx(1 / 5)


def test_edit_distance_in_model_tokens_and_characters(embedder):
    stories = _stories(text=["Maria found the path."])
    units = EditDistanceConfig(unit="token", token_model="embedding")
    config = quiet_config(enabled=["edit_dist"], edit_distance=units)
    frame, sidecar = compute_story_metrics(stories, ["Maria found a path."], config, embedder=embedder)
    assert frame["prototype_edit_dist_norm"][0] == pytest.approx(1 / 5)  # the stand-in's tokens are words
    assert sidecar["edit_distance"] == {
        "unit": "token", "tokenizer": "bag-of-words (test)",
        "normalisation": "Levenshtein distance / length of the longer sequence (rapidfuzz)"}
    config = quiet_config(enabled=["edit_dist"], edit_distance=EditDistanceConfig(unit="char"))
    frame, _ = compute_story_metrics(_stories(text=["kitten"]), ["sitting"], config)
    assert frame["prototype_edit_dist_norm"][0] == pytest.approx(3 / 7)


def test_missing_values_in_a_frame(embedder):
    stories = pd.DataFrame({"story_id": ["a", "b"], "text": pd.array(["A story.", pd.NA], dtype="string"),
                            "token_logprobs": [[-1.0], pd.NA]})
    frame, sidecar = compute_story_metrics(stories, ["A story."], quiet_config(enabled=["perplexity", "edit_dist"]),
                                           embedder=embedder)
    assert frame["perplexity"][0] == pytest.approx(math.e)
    assert sidecar["notes"]["text is null: measured as empty"] == ["b"]
    assert frame["prototype_edit_dist_norm"].tolist() == [0.0, 1.0]


def test_prototype_options(embedder):
    stories = _stories(text=["a red fox", "a blue whale"], prompt_id=["p", "q"])
    config = quiet_config(enabled=["cos_sim"])
    frame, sidecar = compute_story_metrics(stories, [], config, prototype=None, embedder=embedder)
    assert frame[["prototype_cos_sim", "exemplar_cos_sim_max"]].isna().all().all()
    assert sidecar["nan"]["prototype_cos_sim"] == {"no prototype given": ["s0", "s1"]}
    frame, _ = compute_story_metrics(stories, ["a blue whale"], config, prototype="a red fox", embedder=embedder)
    assert frame["prototype_cos_sim"][0] == pytest.approx(1.0)
    assert frame["exemplar_cos_sim_max"][1] == pytest.approx(1.0)
    frame, sidecar = compute_story_metrics(stories, [], config, prototype={"q": "a blue whale"}, embedder=embedder)
    assert math.isnan(frame["prototype_cos_sim"][0]) and frame["prototype_cos_sim"][1] == pytest.approx(1.0)
    assert sidecar["nan"]["prototype_cos_sim"] == {"no prototype given for the story's prompt_id": ["s0"]}


DEGENERATE = {
    "empty": "",
    "whitespace": "  \n\t  ",
    "one_word": "Dragons",
    "very_long": "The sea was calm and the night was long. " * 6000,  # ~250,000 characters
    "non_ascii": "Él soñó con 東京 y con Zürich — ¿por qué? 🐉",
    "html": "<div><script>alert(1)</script><p>Once <b>upon</b> a time&nbsp;</p><br/>The end.</div>",
    "control_chars": "\x00\x01\x02",
    "lone_surrogate": "A broken \ud800 character.",
    "normal": PROTOTYPE,
}


def test_degenerate_texts_get_a_value_or_a_reason(embedder, scorer):
    # object dtype: an Arrow-backed string column cannot even hold an unpaired surrogate
    stories = pd.DataFrame({"story_id": list(DEGENERATE), "text": pd.Series(list(DEGENERATE.values()), dtype=object),
                            "token_logprobs": [[], None, [-2.0], [-0.1] * 5, [-1.0, float("nan")], [-0.3], [-1.0],
                                               [-1.0], [-1.0]],
                            "setting_id": ["x"] * len(DEGENERATE)})
    frame, sidecar = compute_story_metrics(stories, [PROTOTYPE, "Another exemplar."], quiet_config(),
                                           embedder=embedder, scorer=scorer)
    frame = frame.set_index("story_id")
    embedded = ["prototype_cos_sim", "exemplar_cos_sim_max", "exemplar_cos_sim_mean", "pca_x", "pca_y"]
    for story in ("empty", "whitespace"):
        assert frame.loc[story, embedded].isna().all()
        reasons = sidecar["nan"]["prototype_cos_sim"]
        assert story in reasons["no text to embed (empty or whitespace-only)"]
    for story in ("one_word", "very_long", "non_ascii", "html", "lone_surrogate", "normal"):
        assert np.isfinite(frame.loc[story, embedded].astype(float)).all(), story
    # edit distance is defined for every text: the empty story differs in every word
    assert frame.loc["empty", "prototype_edit_dist_norm"] == 1.0
    assert frame["prototype_edit_dist_norm"].between(0, 1).all()
    assert math.isnan(frame.loc["empty", "perplexity_scorer"])
    assert frame.drop(index="empty")["perplexity_scorer"].notna().all()
    # stored log-probs: empty list, null, NaN entries each have their own reason
    perplexity_reasons = sidecar["nan"]["perplexity"]
    assert perplexity_reasons["token_logprobs is empty (no generated tokens)"] == ["empty"]
    assert perplexity_reasons["no token_logprobs stored (the backend could not give them)"] == ["whitespace"]
    assert perplexity_reasons["token_logprobs holds null/NaN entries"] == ["non_ascii"]
    assert frame.loc["one_word", "perplexity"] == pytest.approx(math.exp(2.0))
    notes = sidecar["notes"]
    assert notes["one-word text"] == ["one_word"]
    assert notes["non-ASCII characters"] == ["non_ascii", "lone_surrogate"]
    assert notes["HTML markup (measured as written)"] == ["html"]
    assert notes["invalid Unicode (unpaired surrogates) replaced by U+FFFD"] == ["lone_surrogate"]
    assert any(note.startswith("very long text") for note in notes)
    # every NaN in the table has a reason in the sidecar
    for column in frame.columns:
        missing = set(frame.index[frame[column].isna()])
        explained = {s for ids in sidecar["nan"].get(column, {}).values() for s in ids}
        assert missing == explained, column


def test_bad_stories_frame_is_named():
    with pytest.raises(InputError, match="missing column"):
        compute_story_metrics(pd.DataFrame({"id": ["a"], "text": ["x"]}), [], quiet_config())
    with pytest.raises(InputError, match="unique"):
        compute_story_metrics(pd.DataFrame({"story_id": ["a", "a"], "text": ["x", "y"]}), [], quiet_config())
    with pytest.raises(InputError, match="exemplar_0"):
        compute_story_metrics(_stories(text=["x"]), ["   "], quiet_config())
    with pytest.raises(InputError, match="not a string"):
        compute_story_metrics(_stories(text=[3]), [], quiet_config(enabled=["edit_dist"]))


# ---------------------------------------------------------------- the command, with stand-in models


def _write_store(path, temperatures=(0.0, 0.0, 1.0, 1.0, 1.0), extra=()):
    lines = []
    words = ["sea", "fox", "moon", "tree", "king", "rain", "ship", "road", "bell", "salt"]
    for index, temperature in enumerate(temperatures):
        text = PROTOTYPE if temperature == 0 else " ".join(words[(index + k) % 10] for k in range(12)) + "."
        lines.append({"story_id": f"t{temperature}-{index}", "setting_id": f"T{temperature}",
                      "setting": {"temperature": temperature, "top_k": 50}, "sample_index": index,
                      "prompt_id": "paper", "prompt": "<|im_start|>user\nWrite a story.<|im_end|>\n",
                      "text": text, "token_logprobs": [-1.0] * 5})
    lines += list(extra)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture
def stand_in_models(monkeypatch):
    embedder, scorer = BagOfWordsEmbedder(), ConstantScorer()
    monkeypatch.setattr(compute_module, "SentenceTransformerEmbedder", lambda config, progress: embedder)
    monkeypatch.setattr(compute_module, "load_scorer", lambda config: scorer)
    return embedder, scorer


def test_compute_on_a_run(tmp_path, stand_in_models):
    embedder, _ = stand_in_models
    store = _write_store(tmp_path / "stories.jsonl")
    config = ComputeMetricsConfig(stories=str(store), out_dir=str(tmp_path), metrics=quiet_config(cache=True))
    paths = compute_metrics(config)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "diversity.parquet", "embeddings.parquet", "exemplars.json", "metrics.json", "metrics.parquet",
        "stories.jsonl"]
    assert not list(tmp_path.glob(".*.tmp"))
    frame = pd.read_parquet(paths["metrics"])
    assert frame["story_id"].tolist() == ["t0.0-0", "t0.0-1", "t1.0-2", "t1.0-3", "t1.0-4"]
    # the run's own greedy story (first sample at temperature 0) is the prototype
    assert frame["prototype_edit_dist_norm"][0] == 0.0
    sidecar = json.loads(paths["sidecar"].read_text())
    assert sidecar["exemplars"]["prototype"] == ["greedy:t0.0-0"]
    assert sidecar["input"]["prototype_source"] == "the run's greedy stories"
    assert sidecar["exemplars"]["no_set_reason"] == "no exemplar set given (exemplars=)"
    diversity = pd.read_parquet(paths["diversity"])
    assert diversity["setting_id"].tolist() == ["T0.0", "T1.0"]
    assert diversity["temperature"].tolist() == [0.0, 1.0]
    assert diversity["top_k"].tolist() == [50, 50]
    assert diversity["n"].tolist() == [2, 3]
    assert diversity["vendi_score"][0] == pytest.approx(1.0)  # two identical greedy stories
    assert diversity["mean_pairwise_cos_dist"][0] == pytest.approx(0.0, abs=1e-6)
    assert diversity["mean_pairwise_edit_dist_norm"][0] == 0.0
    assert diversity["n_pairs"].tolist() == [1, 3] and not diversity["pairs_sampled"].any()
    exemplars = json.loads(paths["exemplars"].read_text())
    assert exemplars[0]["exemplar_id"] == "greedy:t0.0-0" and len(exemplars[0]["pca"]) == 2

    # adding stories: only the new one is embedded
    _write_store(store, extra=[{"story_id": "new", "setting_id": "T1.0", "setting": {"temperature": 1.0},
                                "text": "A brand new story about salt.", "prompt_id": "paper"}])
    compute_metrics(config)
    assert embedder.calls[-1] == ["A brand new story about salt."]
    assert json.loads(paths["sidecar"].read_text())["embedding"]["cache"] == {"computed": 1, "from_cache": 6}


def test_each_storys_embedding_is_kept_beside_the_metrics(tmp_path, stand_in_models):
    embedder, _ = stand_in_models
    store = _write_store(tmp_path / "stories.jsonl", extra=[
        {"story_id": "blank", "setting_id": "T1.0", "setting": {"temperature": 1.0}, "text": "  ",
         "prompt_id": "paper"}])
    paths = compute_metrics(ComputeMetricsConfig(stories=str(store), out_dir=str(tmp_path),
                                                 metrics=quiet_config(enabled=["diversity"])))
    table = pd.read_parquet(paths["embeddings"])
    assert table["story_id"].tolist() == pd.read_parquet(paths["metrics"])["story_id"].tolist()
    assert table["embedding"].iloc[-1] is None  # nothing to embed
    vectors = np.stack(table["embedding"].iloc[:-1].to_list())
    assert vectors.dtype == np.float32 and vectors.shape == (5, embedder.dimensions)
    assert np.allclose(vectors, embedder.embed(pd.read_json(store, lines=True)["text"].iloc[:-1].tolist())[0])
    assert json.loads(paths["sidecar"].read_text())["files"]["embeddings"] == "embeddings.parquet"
    # no family that uses the embedding model: no embeddings file
    (tmp_path / "no").mkdir()
    paths = compute_metrics(ComputeMetricsConfig(stories=str(store), out_dir=str(tmp_path / "no"),
                                                 metrics=quiet_config(enabled=["perplexity"])))
    assert "embeddings" not in paths and not (tmp_path / "no" / "embeddings.parquet").exists()


def test_compute_on_outside_stories_with_exemplar_files(tmp_path, stand_in_models):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.txt").write_text("Maria found a path.<br><br>The end.")
    (folder / "b.txt").write_text("A fox.")
    (tmp_path / "exemplar.txt").write_text("Maria found a path.\n\nThe end.")
    sets = tmp_path / "set"
    sets.mkdir()
    (sets / "e1.txt").write_text("A fox.")
    (sets / "e2.txt").write_text("Something else entirely.")
    config = ComputeMetricsConfig(stories=str(folder), out_dir=str(tmp_path / "out"),
                                  exemplar=str(tmp_path / "exemplar.txt"), exemplars=str(sets),
                                  metrics=quiet_config(enabled=["edit_dist", "cos_sim", "diversity"]))
    paths = compute_metrics(config)
    frame = pd.read_parquet(paths["metrics"]).set_index("story_id")
    assert frame.loc["a", "prototype_edit_dist_norm"] == 0.0  # <br> normalised to newlines
    assert frame.loc["b", "exemplar_edit_dist_norm_min"] == 0.0
    assert frame.loc["b", "exemplar_cos_sim_max"] == pytest.approx(1.0)
    # [A, fox, .] vs [Something, else, entirely, .]: 2 substitutions + 1 insertion of 4
    assert frame.loc["b", "exemplar_edit_dist_norm_max"] == pytest.approx(3 / 4)
    assert list(frame.columns) == ["prototype_cos_sim", "exemplar_cos_sim_max", "exemplar_cos_sim_mean",
                                   "prototype_edit_dist_norm", "exemplar_edit_dist_norm_min",
                                   "exemplar_edit_dist_norm_max", "exemplar_edit_dist_norm_mean"]
    sidecar = json.loads(paths["sidecar"].read_text())
    assert sidecar["exemplars"]["set"] == ["set:e1", "set:e2"]
    assert pd.read_parquet(paths["diversity"])["setting_id"].tolist() == ["all"]


def test_no_prototype_is_a_reason_not_a_crash(tmp_path, stand_in_models):
    store = _write_store(tmp_path / "stories.jsonl", temperatures=(0.7, 1.0))
    config = ComputeMetricsConfig(stories=str(store), out_dir=str(tmp_path), metrics=quiet_config(
        enabled=["cos_sim", "edit_dist"]))
    paths = compute_metrics(config)
    assert pd.read_parquet(paths["metrics"])["prototype_cos_sim"].isna().all()
    sidecar = json.loads(paths["sidecar"].read_text())
    (reason,) = sidecar["nan"]["prototype_cos_sim"]
    assert "no greedy story" in reason


def test_bad_input_fails_before_any_model_runs(tmp_path, stand_in_models):
    embedder, _ = stand_in_models
    store = _write_store(tmp_path / "stories.jsonl")
    for exemplar, message in [(tmp_path / "missing.txt", "no such file"), (tmp_path, "is a folder")]:
        config = ComputeMetricsConfig(stories=str(store), out_dir=str(tmp_path / "o"), exemplar=str(exemplar),
                                      metrics=quiet_config())
        with pytest.raises(InputError, match=message):
            compute_metrics(config)
    (tmp_path / "blank.txt").write_text(" \n")
    config = ComputeMetricsConfig(stories=str(store), out_dir=str(tmp_path / "o"),
                                  exemplar=str(tmp_path / "blank.txt"), metrics=quiet_config())
    with pytest.raises(InputError, match="empty"):
        compute_metrics(config)
    assert embedder.calls == []


def test_a_failed_write_keeps_the_previous_file(tmp_path, stand_in_models, monkeypatch):
    store = _write_store(tmp_path / "stories.jsonl")
    config = ComputeMetricsConfig(stories=str(store), out_dir=str(tmp_path), metrics=quiet_config(
        enabled=["edit_dist"]))
    paths = compute_metrics(config)
    before = paths["metrics"].read_bytes()

    def broken(self, path, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", broken)
    with pytest.raises(OSError):
        compute_metrics(config)
    assert paths["metrics"].read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))
