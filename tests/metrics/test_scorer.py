import math

import numpy as np
import pytest

from metrics.compute import compute_story_metrics
from metrics.scorer import plan_windows
from tests.metrics.fakes import quiet_config


def _scored_positions(windows):
    return [p for w in windows for p in range(w.first_target, w.end)]


@pytest.mark.parametrize("n_tokens,first_target,max_length,stride", [
    (10, 3, 16, 8),  # fits in one window
    (100, 5, 16, 8),  # slides
    (100, 1, 16, 15),
    (100, 40, 16, 4),  # prompt longer than the window
    (17, 0, 16, 1),
])
def test_windows_score_every_story_token_once_with_enough_context(n_tokens, first_target, max_length, stride):
    windows = plan_windows(n_tokens, first_target, max_length, stride)
    assert _scored_positions(windows) == list(range(max(first_target, 1), n_tokens))
    for index, window in enumerate(windows):
        assert window.end - window.start <= max_length
        assert window.start < window.first_target  # every scored token has a predecessor in its window
        if window.start > 0:
            assert window.first_target - window.start >= max_length - stride


def test_windows_by_hand():
    assert [(w.start, w.end, w.first_target) for w in plan_windows(10, 2, 4, 2)] == [
        (0, 4, 2), (2, 6, 4), (4, 8, 6), (6, 10, 8)]
    assert plan_windows(1, 0, 4, 2) == []  # a lone token has nothing to be predicted from
    with pytest.raises(ValueError):
        plan_windows(10, 0, 4, 4)


def test_scorer_family_with_a_stand_in_model(scorer):
    import pandas as pd

    stories = pd.DataFrame({"story_id": ["a", "b", "c"], "text": ["Two words", "", "   "],
                            "prompt": ["Write a story.", None, "Write a story."]})
    config = quiet_config(enabled=["perplexity_scorer"])
    frame, sidecar = compute_story_metrics(stories, [], config, scorer=scorer)
    assert frame["perplexity_scorer"][0] == pytest.approx(4.0)  # exp(log 4)
    assert math.isnan(frame["perplexity_scorer"][1])
    assert frame["perplexity_scorer"][2] == pytest.approx(4.0)  # whitespace is text a model can score
    assert sidecar["nan"]["perplexity_scorer"] == {"empty text: no tokens to score": ["b"]}
    # the empty story is never sent; prompts are passed through
    assert scorer.calls == [(["Two words", "   "], ["Write a story.", "Write a story."])]
    assert sidecar["columns"]["perplexity_scorer"]["conditioned_on"] == {
        "prompt": 2, "prompt_if_missing": 0, "start_token_only": 0}


def test_scorer_prompt_for_stories_without_one(scorer):
    import pandas as pd

    from metrics.config import ScorerConfig

    stories = pd.DataFrame({"story_id": ["a", "b"], "text": ["x y", "z"], "prompt": ["P", None]})
    config = quiet_config(enabled=["perplexity_scorer"], scorer=ScorerConfig(prompt_if_missing="Write a story."))
    _, sidecar = compute_story_metrics(stories, [], config, scorer=scorer)
    assert scorer.calls[-1][1] == ["P", "Write a story."]
    assert sidecar["columns"]["perplexity_scorer"]["conditioned_on"] == {
        "prompt": 1, "prompt_if_missing": 1, "start_token_only": 0}
    config = quiet_config(enabled=["perplexity_scorer"], scorer=ScorerConfig(condition_on_prompt=False))
    compute_story_metrics(stories, [], config, scorer=scorer)
    assert scorer.calls[-1][1] == [None, None]


def test_scorer_outputs_are_cached_by_content(scorer):
    import pandas as pd

    config = quiet_config(enabled=["perplexity_scorer"], cache=True)
    first = pd.DataFrame({"story_id": ["a"], "text": ["One story"]})
    compute_story_metrics(first, [], config, scorer=scorer)
    both = pd.DataFrame({"story_id": ["a", "b"], "text": ["One story", "Another story here"]})
    frame, sidecar = compute_story_metrics(both, [], config, scorer=scorer)
    assert scorer.calls[-1][0] == ["Another story here"]
    assert sidecar["columns"]["perplexity_scorer"]["cache"] == {"computed": 1, "from_cache": 1}
    assert np.isfinite(frame["perplexity_scorer"]).all()
