import json

import pandas as pd
import pytest

from metrics.inputs import InputError, greedy_prototypes, load_exemplar, load_exemplar_set, load_stories


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def survey_like(tmp_path):
    """A folder shaped like the paper's survey_stories: <br> breaks, _practice, metadata.csv."""
    folder = tmp_path / "stories"
    folder.mkdir()
    _write(folder / "-ab1.txt", "First line.<br><br>Second line.")
    _write(folder / "cd2.txt", "A story at a low temperature.")
    _write(folder / "ef3_practice.txt", "A practice story.")
    _write(folder / "metadata.csv", ",id,t,type\n0,ef3,1.000,practice\n1,-ab1,2.000,evaluation\n"
                                    "2,cd2,0.001,evaluation\n")
    return folder


def test_text_folder_with_metadata(survey_like):
    loaded = load_stories(survey_like)
    frame = loaded.frame.set_index("story_id")
    assert sorted(frame.index) == ["-ab1", "cd2", "ef3"]
    assert frame.loc["ef3", "practice"] and not frame.loc["cd2", "practice"]
    assert frame.loc["cd2", "temperature"] == 0.001
    assert frame.loc["-ab1", "setting_id"] == "temperature=2.0"
    assert loaded.setting_columns == ["temperature"]
    assert loaded.source["practice_story_ids"] == ["ef3"]
    # the text is kept as written; line breaks are normalised when measuring
    assert frame.loc["-ab1", "text"] == "First line.<br><br>Second line."


def test_practice_stories_can_be_left_out(survey_like):
    loaded = load_stories(survey_like, include_practice=False)
    assert sorted(loaded.frame["story_id"]) == ["-ab1", "cd2"]
    assert loaded.source["practice_stories"] == "left out (include_practice=false)"


def test_greedy_prototype_from_the_lowest_temperature(survey_like):
    frame = load_stories(survey_like).frame
    chosen, how = greedy_prototypes(frame, max_temperature=0.01)
    assert [frame["story_id"].iloc[row] for row in chosen.values()] == ["cd2"]
    assert greedy_prototypes(frame, max_temperature=0.0001)[0] == {}
    assert greedy_prototypes(frame.drop(columns="temperature"), 0.01)[0] == {}


def test_greedy_prototype_per_prompt(tmp_path):
    rows = [
        {"story_id": "g1", "prompt_id": "p", "temperature": 0.0, "sample_index": 1, "text": "greedy p again"},
        {"story_id": "g0", "prompt_id": "p", "temperature": 0.0, "sample_index": 0, "text": "greedy p"},
        {"story_id": "h", "prompt_id": "p", "temperature": 1.0, "sample_index": 0, "text": "hot p"},
        {"story_id": "q", "prompt_id": "q", "temperature": 0.7, "sample_index": 0, "text": "warm q"},
    ]
    chosen, _ = greedy_prototypes(pd.DataFrame(rows), 0.01)
    assert chosen == {"p": 1}  # g0: the first sample; prompt q has no greedy story


def test_harness_store(tmp_path):
    stories = [
        {"story_id": "s1", "setting_id": "A", "setting": {"temperature": 0.5, "top_k": 50, "stop": ["\n\n"]},
         "prompt_id": "paper", "prompt": "Write a story.", "text": "Hello.", "token_logprobs": [-0.5, -1.0]},
        {"story_id": "s2", "setting_id": "B", "setting": {"temperature": 1.5, "top_k": 50, "stop": ["\n\n"]},
         "prompt_id": "paper", "prompt": "Write a story.", "text": "Bye.", "token_logprobs": None},
    ]
    _write(tmp_path / "stories.jsonl", "".join(json.dumps(s) + "\n" for s in stories))
    for path in (tmp_path / "stories.jsonl", tmp_path):  # the file or its run folder
        loaded = load_stories(path)
        assert loaded.setting_columns == ["temperature", "top_k", "stop"]
        assert loaded.frame["setting_id"].tolist() == ["A", "B"]
        assert list(loaded.frame["token_logprobs"][0]) == [-0.5, -1.0]  # kept as a compact float array
        assert loaded.frame["stop"][0] == '["\\n\\n"]'


def test_harness_store_keeps_each_story_seed_apart_from_the_base_seed(tmp_path):
    stories = [{"story_id": f"s{i}", "setting_id": f"T{t}", "seed": 500 + 11 * i, "model": "m", "text": "Hi.",
                "setting": {"temperature": t, "seed": 3, "model": "setting-model"}}
               for i, t in enumerate([0.5, 0.5, 1.5])]
    _write(tmp_path / "stories.jsonl", "".join(json.dumps(s) + "\n" for s in stories))
    loaded = load_stories(tmp_path)
    assert loaded.frame["seed"].tolist() == [500, 511, 522]
    assert loaded.frame["base_seed"].tolist() == [3, 3, 3]
    assert loaded.frame["model"].tolist() == ["m"] * 3 and loaded.frame["setting.model"].tolist() == ["setting-model"] * 3
    assert loaded.setting_columns == ["temperature", "base_seed", "setting.model"]


def test_unpaired_surrogates_in_json_are_replaced(tmp_path):
    _write(tmp_path / "s.jsonl", '{"story_id": "a", "text": "bad \\ud800 text"}\n')
    assert load_stories(tmp_path / "s.jsonl").frame["text"][0] == "bad \ufffd text"


def test_csv_with_spreadsheet_guard(tmp_path):
    path = _write(tmp_path / "s.csv", "story_id,text,temperature\n'-nc7,A tale.,0.5\nxy,,1.0\n")
    frame = load_stories(path).frame
    assert frame["story_id"].tolist() == ["-nc7", "xy"]
    assert frame["text"].tolist() == ["A tale.", ""]
    assert frame["temperature"].tolist() == [0.5, 1.0]
    assert frame["setting_id"].tolist() == ["temperature=0.5", "temperature=1.0"]


@pytest.mark.parametrize("content,message", [
    ("id,text\n1,a\n", "missing column(s) ['story_id']"),
    ("story_id,text\n1,a\n1,b\n", "repeated: ['1']"),
    ("story_id,text\n", "no stories"),
])
def test_bad_csv_is_named(tmp_path, content, message):
    path = _write(tmp_path / "bad.csv", content)
    with pytest.raises(InputError, match="bad.csv") as error:
        load_stories(path)
    assert message in str(error.value)


def test_bad_paths(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_stories(tmp_path / "missing.jsonl")
    with pytest.raises(InputError, match="expected a .jsonl"):
        load_stories(_write(tmp_path / "x.parquet", ""))
    with pytest.raises(InputError, match="no .txt files"):
        load_stories(tmp_path)
    _write(tmp_path / "s.jsonl", '{"story_id": "a"}\n')
    with pytest.raises(InputError, match="has no 'text' field"):
        load_stories(tmp_path / "s.jsonl")


def test_exemplars(tmp_path, survey_like):
    path = _write(tmp_path / "exemplar.txt", "\ufeffThe prototype.\n\nSecond paragraph.")
    assert load_exemplar(path) == ("exemplar", "The prototype.\n\nSecond paragraph.")
    with pytest.raises(InputError, match="is a folder"):
        load_exemplar(survey_like)
    with pytest.raises(InputError, match="holds 2 stories"):
        load_exemplar(_write(tmp_path / "two.csv", "story_id,text\na,x\nb,y\n"))
    assert sorted(i for i, _ in load_exemplar_set(survey_like)) == ["-ab1", "cd2", "ef3"]
    with pytest.raises(InputError, match="exemplars="):
        load_exemplar_set(tmp_path / "nope")
