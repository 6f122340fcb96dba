"""Families declare what they need and register themselves; the compute entry point reads only that."""

import ast
import contextlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

import metrics.compute as compute_module
from metrics import registry
from metrics.compute import compute_metrics, compute_story_metrics, to_typed
from metrics.config import ComputeMetricsConfig, EditDistanceConfig, MetricName
from metrics.context import Level, MetricFamily, Need
from tests.metrics.fakes import BagOfWordsEmbedder, ConstantScorer, quiet_config
from tests.metrics.test_compute import _write_store

CONF = Path(__file__).resolve().parents[2] / "conf"


@contextlib.contextmanager
def registered(family):
    registry.register(family)
    try:
        yield family
    finally:
        registry.unregister(family.name)


def enabled_with(config, *names):
    """``config`` with extra families enabled. A shipped family is a member of MetricName (the config's
    gate, so a typo fails at composition); a toy one is appended after the check."""
    config.enabled = [*config.enabled, *names]
    return config


def _toy_story_compute(context):
    return ({"toy_chars": np.array([float(len(text)) for text in context.texts])},
            {"toy_chars": {"formula": "len(text)"}})


def _stories(texts, **columns):
    return pd.DataFrame({"story_id": [f"s{i}" for i in range(len(texts))], "text": texts, **columns})


@pytest.fixture
def counted_models(monkeypatch):
    """Stand-in models, counting how often the compute entry point builds each."""
    built = {"embedder": 0, "scorer": 0}
    embedder, scorer = BagOfWordsEmbedder(), ConstantScorer()

    def make_embedder(config, progress):
        built["embedder"] += 1
        return embedder

    def make_scorer(config):
        built["scorer"] += 1
        return scorer

    monkeypatch.setattr(compute_module, "SentenceTransformerEmbedder", make_embedder)
    monkeypatch.setattr(compute_module, "load_scorer", make_scorer)
    return built


def test_every_metric_name_has_one_family_in_module_order():
    names = [family.name for family in registry.families()]
    assert names == [name.value for name in MetricName]
    assert len(registry.MODULES) == len(names)
    levels = {family.name: family.level for family in registry.families()}
    assert levels["diversity"] is Level.setting
    assert [n for n, level in levels.items() if level is Level.story] == [
        "perplexity", "sampler_diagnostics", "perplexity_scorer", "cos_sim", "edit_dist", "pca"]


def test_declared_needs():
    needs = {family.name: family.needs_for(quiet_config()) for family in registry.families()}
    assert needs == {
        "perplexity": frozenset(),
        "sampler_diagnostics": frozenset(),
        "perplexity_scorer": {Need.scorer},
        "cos_sim": {Need.embedding, Need.exemplars},
        "edit_dist": {Need.exemplars},
        "pca": {Need.embedding, Need.exemplars},
        "diversity": {Need.embedding},
    }
    by_scorer_tokens = quiet_config(edit_distance=EditDistanceConfig(unit="token", token_model="scorer"))
    edit_dist, diversity = (f for f in registry.families() if f.name in ("edit_dist", "diversity"))
    assert edit_dist.needs_for(by_scorer_tokens) == {Need.exemplars, Need.scorer}
    assert diversity.needs_for(by_scorer_tokens) == {Need.embedding, Need.scorer}


def test_registering_twice_or_badly_fails():
    perplexity = registry.families()[0]
    with pytest.raises(ValueError, match="already registered"):
        registry.register(perplexity)
    with pytest.raises(KeyError, match="no metric family"):
        registry.unregister("no_such_family")
    with pytest.raises(ValueError, match="names its output file"):
        MetricFamily(name="toy", level="setting", compute=_toy_story_compute)
    with pytest.raises(ValueError, match="no registered family"):
        registry.selected(["perplexity", "toy"])


def test_compute_never_names_a_metric():
    """compute.py's code (docstrings aside) holds no family name: it runs what the registry declares."""
    tree = ast.parse(Path(compute_module.__file__).read_text(encoding="utf-8"))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    words = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            words |= set(re.findall(r"\w+", node.value))
        elif isinstance(node, ast.Name):
            words.add(node.id)
        elif isinstance(node, ast.Attribute):
            words.add(node.attr)
        elif isinstance(node, ast.alias):
            words |= set(re.findall(r"\w+", node.name))
    named = {family.name for family in registry.families()} & words
    assert not named, f"metrics/compute.py names the metric families {sorted(named)}"
    assert not {"MetricName", "diversity", "pca", "edit_distance"} & words


def test_a_toy_story_family_is_computed_without_touching_compute(embedder):
    toy = MetricFamily(name="toy_length", level="story", needs=frozenset(), compute=_toy_story_compute)
    with registered(toy):
        config = enabled_with(quiet_config(enabled=["perplexity"]), "toy_length")
        frame, sidecar = compute_story_metrics(_stories(["ab", "abcd"], token_logprobs=[[-1.0], [-2.0]]),
                                               ["ab"], config, embedder=embedder)
        assert list(frame.columns) == ["story_id", "perplexity", "toy_chars"]
        assert frame["toy_chars"].tolist() == [2.0, 4.0]
        assert sidecar["metrics_enabled"] == ["perplexity", "toy_length"]
        assert sidecar["columns"]["toy_chars"] == {"formula": "len(text)"}
        assert set(sidecar["timing_s"]) == {"perplexity", "toy_length"}
        # it declared no model: none was used
        assert embedder.calls == [] and "embedding" not in sidecar
    assert "toy_length" not in {family.name for family in registry.families()}
    # unregistered, it can no longer be selected
    with pytest.raises(ValueError, match="toy_length"):
        compute_story_metrics(_stories(["ab"]), [], enabled_with(quiet_config(enabled=[]), "toy_length"))


def test_a_toy_setting_family_writes_its_own_file(tmp_path, counted_models):
    def longest(context, stories, setting_columns):
        table = pd.DataFrame({"setting_id": stories["setting_id"].astype(str),
                              "chars": [len(text) for text in context.texts]})
        return table.groupby("setting_id", sort=False, as_index=False)["chars"].max(), {"toy_longest": {"n": 1}}

    toy = MetricFamily(name="toy_longest", level="setting", needs=frozenset(), compute=longest,
                       file="toy_longest.parquet")
    store = _write_store(tmp_path / "stories.jsonl")
    with registered(toy):
        config = ComputeMetricsConfig(stories=str(store), out_dir=str(tmp_path / "out"),
                                      metrics=enabled_with(quiet_config(enabled=["edit_dist"]), "toy_longest"))
        paths = compute_metrics(config)
        assert paths["toy_longest"].name == "toy_longest.parquet"
        assert pd.read_parquet(paths["toy_longest"])["setting_id"].tolist() == ["T0.0", "T1.0"]
        sidecar = json.loads(paths["sidecar"].read_text())
        assert sidecar["files"]["toy_longest"] == "toy_longest.parquet"
        assert sidecar["toy_longest"] == {"n": 1}
        assert list(pd.read_parquet(paths["metrics"]).columns) == [
            "story_id", "prototype_edit_dist_norm", "exemplar_edit_dist_norm_min", "exemplar_edit_dist_norm_max",
            "exemplar_edit_dist_norm_mean"]
        # the Python API leaves setting-level families to the command, and says so
        _, sidecar = compute_story_metrics(_stories(["a"]), [], config.metrics)
        assert sidecar["toy_longest"] == {"skipped": "toy_longest per setting is measured by compute_metrics "
                                                     "(python -m metrics.compute), into toy_longest.parquet"}
    assert counted_models == {"embedder": 0, "scorer": 0}


def test_a_model_is_built_only_for_a_family_that_declares_it(embedder, scorer):
    def uses_the_scorer(context):
        context.scorer.describe()
        return {"toy_scored": np.zeros(context.n)}, {}

    honest = MetricFamily(name="toy_scored", level="story", needs=frozenset({Need.scorer}), compute=uses_the_scorer)
    with registered(honest):
        frame, _ = compute_story_metrics(_stories(["a"]), [], enabled_with(quiet_config(enabled=[]), "toy_scored"),
                                         scorer=scorer)
        assert frame["toy_scored"].tolist() == [0.0]
    sloppy = MetricFamily(name="toy_scored", level="story", needs=frozenset(), compute=uses_the_scorer)
    with registered(sloppy):
        with pytest.raises(RuntimeError, match="used the scorer model without declaring it"):
            compute_story_metrics(_stories(["a"]), [], enabled_with(quiet_config(enabled=[]), "toy_scored"),
                                  scorer=scorer)


def test_a_family_cannot_overwrite_another_familys_column(embedder):
    clash = MetricFamily(name="toy_clash", level="story", compute=lambda context: (
        {"perplexity": np.zeros(context.n)}, {}))
    with registered(clash):
        with pytest.raises(RuntimeError, match="already written"):
            compute_story_metrics(_stories(["a"]), [],
                                  enabled_with(quiet_config(enabled=["perplexity"]), "toy_clash"))


def test_metrics_fast_never_constructs_the_scorer(tmp_path, counted_models, monkeypatch):
    import metrics.scorer

    def no_scorer(*args, **kwargs):
        raise AssertionError("metrics=fast built or checked the scorer")

    monkeypatch.setattr(compute_module, "check_scorer_path", no_scorer)
    monkeypatch.setattr(metrics.scorer.TransformersScorer, "__init__", no_scorer)
    store = _write_store(tmp_path / "stories.jsonl")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="compute_metrics", overrides=[
            f"stories={store}", f"out_dir={tmp_path / 'out'}", "metrics=fast", "metrics.progress=false",
            "metrics.cache=false"])
    config = to_typed(cfg)
    assert MetricName.perplexity_scorer not in config.metrics.enabled
    paths = compute_metrics(config)
    assert counted_models == {"embedder": 1, "scorer": 0}
    frame = pd.read_parquet(paths["metrics"])
    assert "perplexity_scorer" not in frame.columns and "pca_x" in frame.columns
    assert "perplexity_scorer" not in json.loads(paths["sidecar"].read_text())["columns"]
    assert pd.read_parquet(paths["diversity"])["n"].tolist() == [2, 3]


def test_the_default_metrics_build_each_model_once(tmp_path, counted_models):
    store = _write_store(tmp_path / "stories.jsonl")
    paths = compute_metrics(ComputeMetricsConfig(stories=str(store), out_dir=str(tmp_path), metrics=quiet_config()))
    assert counted_models == {"embedder": 1, "scorer": 1}
    exemplars = json.loads(paths["exemplars"].read_text())
    assert list(exemplars[0]) == ["exemplar_id", "role", "source", "pca", "text"]
    assert len(exemplars[0]["pca"]) == 2
    # without the PCA family, exemplars.json keeps its shape, pca null
    paths = compute_metrics(ComputeMetricsConfig(stories=str(store), out_dir=str(tmp_path),
                                                 metrics=quiet_config(enabled=["perplexity"])))
    exemplars = json.loads(paths["exemplars"].read_text())
    assert list(exemplars[0]) == ["exemplar_id", "role", "source", "pca", "text"] and exemplars[0]["pca"] is None
    assert counted_models == {"embedder": 1, "scorer": 1}
