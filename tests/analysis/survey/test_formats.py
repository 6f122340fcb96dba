"""The format registry, the tidy ratings table, and CSVs as spreadsheets save them (BOM, ';' and '1,5')."""

from __future__ import annotations

import csv
import gzip

import pandas as pd
import pytest

from analysis.survey.config import ImportConfig, SurveyError
from analysis.survey.formats import FORMATS, by_name, detect_format
from analysis.survey.formats.base import SurveyFormat, finish
from analysis.survey.ingest import import_ratings
from analysis.survey.questions import CRITERION_NAMES

from .synthetic import export
from .test_import import html_csv, key_path

CRITERIA = list(CRITERION_NAMES)
COMPARED = ["story_id", "participant_id", "evaluation_index", *CRITERIA, "genai_familiarity", "genai_comfort"]


def tidy_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "story_id": ["s1", "s2", "s1", "s3"], "temperature": [0.001, 1.334, 0.001, 2.0],
        "evaluation_index": [1, 2, 1, 2], "participant_id": ["p1", "p1", "p2", "p2"],
        "novelty": [1.5, 2.25, 4.0, 3.125], "typicality": [2.0, 3.5, 1.75, 5.0],
        "cohesion": [3.0, 4.5, 2.5, 1.0], "coherence": [4.875, 1.0, 2.0, 3.5],
        "genai_familiarity": [5, 5, 2, 2], "genai_comfort": [4, 4, 1, 1],
    })


def qualtrics_frame() -> pd.DataFrame:
    """A small Qualtrics wide export in the paper's layout: k_Criterion_1 rated story_id_{k-1}."""
    rows = []
    for number, (pid, stories) in enumerate([("61072", ("Erj4", "'-nc7")), ("50311", ("MLY9", "Xt1F"))]):
        row = {"ResponseId": f"R_{number}", "Finished": "True", "RandomID": pid,
               "Gen AI Familiarity_1": 3 + number, "Gen AI Comfort_1": 2}
        for k, story in enumerate(stories, start=1):
            for i, criterion in enumerate(CRITERIA):
                row[f"{k}_{criterion.capitalize()}_1"] = round(1 + (number + k + i) * 0.375, 3)
        for k, story in enumerate(stories):
            row[f"story_id_{k}"], row[f"story_{k}"] = story, "Once upon a time, a story; with commas.<br>End."
        rows.append(row)
    return pd.DataFrame(rows)


def packets_frame(small_export) -> pd.DataFrame:
    packets = pd.read_csv(small_export.out_dir / "participant" / "packets.csv", dtype=str, keep_default_na=False)
    for i, criterion in enumerate(CRITERIA):
        packets[criterion] = [f"{1 + ((row + i) % 8) * 0.5:g}" for row in range(len(packets))]
    packets["genai_familiarity"] = "2"
    return packets


def sample(name: str, small_export) -> pd.DataFrame:
    """A file's table in each registered format."""
    if name == "html":
        return html_csv(small_export, 0, "pid0")
    if name == "long":
        return packets_frame(small_export)
    if name == "qualtrics":
        return qualtrics_frame()
    if name == "tidy":
        return tidy_frame()
    raise AssertionError(f"no sample for the format {name}: add one here")


def import_file(tmp_path, path, **overrides):
    return import_ratings(ImportConfig(input=str(path), out=str(tmp_path / f"out_{path.stem}.csv"), **overrides))


def as_european(frame: pd.DataFrame) -> pd.DataFrame:
    """What a spreadsheet in a decimal-comma locale shows: every decimal number with a comma."""
    def convert(value):
        return str(value).replace(".", ",") if isinstance(value, float) else value
    return frame.map(convert)


# ---------------------------------------------------------------------------
# The registry


def test_every_format_is_detected_from_its_own_files_only(small_export):
    assert [f.name for f in FORMATS] == ["html", "long", "qualtrics", "tidy"]
    for survey_format in FORMATS:
        columns = list(sample(survey_format.name, small_export).columns)
        assert [f.name for f in FORMATS if f.detect(columns)] == [survey_format.name]
        assert detect_format(columns, "x.csv") is survey_format is by_name(survey_format.name)


@pytest.mark.parametrize("name", [f.name for f in FORMATS])
def test_each_format_is_detected_and_read(name, small_export, tmp_path):
    frame = sample(name, small_export)
    path = tmp_path / f"{name}.csv"
    frame.to_csv(path, index=False)
    result = import_file(tmp_path, path, on_invalid="drop_rows")
    assert result.format.name == name and result.exclusions.empty
    stories = frame.loc[frame["kind"] == "story"] if "kind" in frame else frame
    assert len(result.ratings) == {"qualtrics": 4}.get(name, len(stories))
    assert result.ratings[CRITERIA].notna().all().all()
    assert import_file(tmp_path, path, format=name, on_invalid="drop_rows").ratings.equals(result.ratings)


def test_columns_of_two_formats_or_of_none_name_the_file_and_the_choice():
    both = ["survey_id", "packet", "blinded_id", "story_id", "participant_id", *CRITERIA]
    with pytest.raises(SurveyError, match=r"odd\.csv: the columns .* fit several formats \(html, tidy\); "
                                          r"give format=html or format=tidy"):
        detect_format(both, "odd.csv")
    with pytest.raises(SurveyError, match=r"odd\.csv: cannot tell the format .*format=tidy \(the long ratings"):
        detect_format(["a", "b"], "odd.csv")
    with pytest.raises(SurveyError, match="format='excel' is not allowed: one of auto, html, long, qualtrics, tidy"):
        ImportConfig(input="x", out="y", format="excel")


def test_a_new_format_is_one_module_and_one_line(monkeypatch, run_dir, tmp_path):
    """What a format declares is all the import and the export need."""
    import analysis.survey.export as export_module
    import analysis.survey.formats as registry

    def read(frame, path, options):
        return finish([{"source": str(path), "source_row": i + 1, "participant_id": row["who"], "kind": "story",
                        "evaluation_index": "1", "blinded_id": row["what"], **{c: row["all"] for c in CRITERIA},
                        "complete": True, "incomplete_reason": ""} for i, row in frame.iterrows()])

    def write(survey, config):
        return {"participant/plain.txt": "\n".join(s.text for s in survey.practice) + "\n"}

    plain = SurveyFormat("plain", "a test format", lambda columns: "who" in columns, read, write)
    monkeypatch.setattr(registry, "FORMATS", (*registry.FORMATS, plain))
    monkeypatch.setattr(export_module, "FORMATS", registry.FORMATS)
    result = export(run_dir, tmp_path / "survey", participants=7, stories_per_participant=2, stories_per_setting=2)
    assert (tmp_path / "survey" / "participant" / "plain.txt").read_text().startswith(result.survey.practice[0].text)
    pd.DataFrame({"who": ["p1"], "what": ["s1"], "all": ["2.5"]}).to_csv(tmp_path / "plain.csv", index=False)
    imported = import_file(tmp_path, tmp_path / "plain.csv")
    assert imported.format is plain and imported.ratings["novelty"].tolist() == [2.5]


# ---------------------------------------------------------------------------
# The tidy ratings table


def test_the_papers_long_file_imports_as_tidy(paper_dir, tmp_path):
    result = import_file(tmp_path, paper_dir / "survey_data_by_evaluation.csv.tar.gz")
    ratings = result.ratings
    assert result.format.name == "tidy"
    assert (len(ratings), ratings["participant_id"].nunique(), ratings["story_id"].nunique()) == (180, 36, 31)
    published = pd.read_csv(paper_dir / "survey_data_by_evaluation.csv.tar.gz", index_col=0,
                            dtype={"story_id": str, "participant_id": str})
    written = pd.read_csv(result.out, dtype={"story_id": str, "participant_id": str})
    pd.testing.assert_frame_equal(written[[*COMPARED, "temperature"]],
                                  published[[*COMPARED, "temperature"]].reset_index(drop=True))
    raw = import_file(tmp_path, paper_dir / "survey_data_16_feb_2024.csv.tar.gz").ratings
    pd.testing.assert_frame_equal(ratings[COMPARED], raw[COMPARED])  # the same ratings as from the raw export


def test_the_imports_own_output_imports_again_and_unblinds_later(small_export, tmp_path):
    folder = tmp_path / "downloads"
    folder.mkdir()
    for i in range(3):
        html_csv(small_export, i, f"pid{i}", seed=i).to_csv(folder / f"ratings_{i}.csv", index=False)
    blinded = import_ratings(ImportConfig(input=str(folder), out=str(tmp_path / "blinded.csv")))
    again = import_file(tmp_path, tmp_path / "blinded.csv")
    assert again.format.name == "tidy"
    pd.testing.assert_frame_equal(again.ratings, blinded.ratings)
    unblinded = import_file(tmp_path, tmp_path / "blinded.csv", key=key_path(small_export))
    direct = import_ratings(ImportConfig(input=str(folder), out=str(tmp_path / "direct.csv"),
                                         key=key_path(small_export)))
    pd.testing.assert_frame_equal(unblinded.ratings, direct.ratings)
    # The key's columns are kept (its kind column is read as each row's kind), and not joined twice.
    pd.testing.assert_frame_equal(import_file(tmp_path, tmp_path / "direct.csv").ratings,
                                  direct.ratings.drop(columns="kind"))
    again_keyed = import_file(tmp_path, tmp_path / "direct.csv", key=key_path(small_export)).ratings
    assert list(again_keyed.columns) == list(direct.ratings.columns)


# ---------------------------------------------------------------------------
# What spreadsheets save


@pytest.mark.parametrize("name", [f.name for f in FORMATS])
def test_a_byte_order_mark_is_ignored(name, small_export, tmp_path):
    frame = sample(name, small_export)
    frame.to_csv(tmp_path / "plain.csv", index=False)
    frame.to_csv(tmp_path / "bom.csv", index=False, encoding="utf-8-sig", quoting=csv.QUOTE_ALL)
    assert (tmp_path / "bom.csv").read_bytes().startswith(b'\xef\xbb\xbf"')
    plain, bom = (import_file(tmp_path, tmp_path / f, on_invalid="drop_rows") for f in ("plain.csv", "bom.csv"))
    assert bom.format.name == name
    pd.testing.assert_frame_equal(bom.ratings, plain.ratings)


@pytest.mark.parametrize("name", [f.name for f in FORMATS])
def test_semicolons_and_decimal_commas_give_the_same_numbers(name, small_export, tmp_path):
    frame = sample(name, small_export)
    if name == "long":  # numbers as a spreadsheet would hold them
        frame[CRITERIA] = frame[CRITERIA].astype(float)
    frame.to_csv(tmp_path / "comma.csv", index=False)
    european = as_european(frame)
    assert european.astype(str).apply(lambda c: c.str.fullmatch(r"\d+,\d+")).any().any()
    european.to_csv(tmp_path / "semicolon.csv", index=False, sep=";")
    english = import_file(tmp_path, tmp_path / "comma.csv", on_invalid="drop_rows")
    detected = import_file(tmp_path, tmp_path / "semicolon.csv", on_invalid="drop_rows")
    named = import_file(tmp_path, tmp_path / "semicolon.csv", on_invalid="drop_rows", delimiter="semicolon",
                        decimal="comma")
    assert detected.format.name == name
    pd.testing.assert_frame_equal(detected.ratings, english.ratings)
    pd.testing.assert_frame_equal(named.ratings, english.ratings)
    european.to_csv(tmp_path / "tab.csv", index=False, sep="\t")
    pd.testing.assert_frame_equal(import_file(tmp_path, tmp_path / "tab.csv", on_invalid="drop_rows").ratings,
                                  english.ratings)


def test_the_papers_long_file_with_semicolons_and_decimal_commas(paper_dir, tmp_path):
    published = pd.read_csv(paper_dir / "survey_data_by_evaluation.csv.tar.gz", index_col=0, dtype=str)
    with gzip.open(tmp_path / "european.csv.gz", "wt", encoding="utf-8-sig", newline="") as stream:
        published.apply(lambda c: c.str.replace(".", ",", regex=False)).to_csv(stream, sep=";")
    result = import_file(tmp_path, tmp_path / "european.csv.gz")
    english = import_file(tmp_path, paper_dir / "survey_data_by_evaluation.csv.tar.gz")
    pd.testing.assert_frame_equal(result.ratings, english.ratings)


def write_text(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


HEADER = "story_id,participant_id,novelty,typicality,cohesion,coherence\n"


def test_an_unquoted_decimal_comma_is_never_two_columns(tmp_path):
    one_row = write_text(tmp_path, "one.csv", HEADER + "s1,p1,2,3,4,5\ns2,p1,1,5,3,4,5\n")
    with pytest.raises(SurveyError, match=r"one\.csv: data row 2 has 7 fields but the header has 6 "
                                          r"\(read with delimiter=comma\); a decimal comma"):
        import_file(tmp_path, one_row)
    # One extra field on every row: pandas alone would take the first column for an index and shift the rest.
    every_row = write_text(tmp_path, "every.csv", HEADER + "s1,p1,1,5,3,4,5\ns2,p1,2,5,3,4,5\n")
    with pytest.raises(SurveyError, match=r"every\.csv: data row 1 has 7 fields but the header has 6"):
        import_file(tmp_path, every_row)


def test_a_decimal_comma_is_never_fifteen(tmp_path):
    quoted = write_text(tmp_path, "quoted.csv", HEADER + 's1,p1,"1,5",3,4,5\n')
    with pytest.raises(SurveyError, match=r"novelty='1,5' is not a number; allowed: numbers in \[1, 5\] "
                                          r"\(a decimal comma\? give decimal=comma\)"):
        import_file(tmp_path, quoted)
    assert import_file(tmp_path, quoted, decimal="comma").ratings["novelty"].tolist() == [1.5]
    semicolons = write_text(tmp_path, "semi.csv", HEADER.replace(",", ";") + "s1;p1;1,5;3;4;5\n")
    assert import_file(tmp_path, semicolons).ratings["novelty"].tolist() == [1.5]
    with pytest.raises(SurveyError, match=r"novelty='1,5' is not a number"):
        import_file(tmp_path, semicolons, decimal="point")


def test_both_decimal_marks_in_one_file_is_an_error_naming_it(tmp_path):
    mixed = write_text(tmp_path, "mixed.csv", HEADER.replace(",", ";") + "s1;p1;1,5;3;4;5\ns2;p1;2.5;3;4;5\n")
    with pytest.raises(SurveyError, match=r"mixed\.csv: numbers with a decimal comma \(novelty='1,5' in row 1\) and "
                                          r"with a decimal point \(novelty='2\.5' in row 2\).*give decimal=comma or "
                                          r"decimal=point"):
        import_file(tmp_path, mixed)
    assert import_file(tmp_path, mixed, decimal="point", on_invalid="drop_rows").ratings["novelty"].tolist() == [2.5]
    with pytest.raises(SurveyError, match=r"mixed\.csv row 2: novelty='2\.5' has a decimal point but the file is "
                                          r"read with decimal commas"):
        import_file(tmp_path, mixed, decimal="comma")


def test_an_ambiguous_delimiter_is_an_error_naming_the_file(tmp_path):
    path = write_text(tmp_path, "both.csv", "a;b,c\n1;2,3\n")
    with pytest.raises(SurveyError, match=r"both\.csv: cannot tell the delimiter: the header splits into columns on "
                                          r"',' and on ';'; give delimiter=comma or delimiter=semicolon"):
        import_file(tmp_path, path)
    with pytest.raises(SurveyError, match=r"both\.csv: cannot tell the format"):  # the delimiter, once named, is used
        import_file(tmp_path, path, delimiter=";")


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes((HEADER + "s1,p1,2,3,4,5\n").replace("story_id", "störy_id").encode("latin-1"))
    with pytest.raises(SurveyError, match=r"latin1\.csv: is not UTF-8 text .*CSV UTF-8"):
        import_file(tmp_path, path)
