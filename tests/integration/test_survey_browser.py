"""The offline HTML survey in real headless Chromium (Debian's chromium and chromium-driver).

A script fills a packet as a participant would, downloads the ratings CSV,
imports it back and compares. Stories containing <script> and
<img src=x onerror=...> must run nothing and show as literal text.
Install the browser with scripts/install-browser.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                       reason="needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver); "
                              "run scripts/install-browser"),
]

selenium = pytest.importorskip("selenium", reason="needs selenium (pip install -e '.[dev]')")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

from analysis.criteria import CRITERION_NAMES as CRITERIA  # noqa: E402
from analysis.survey.blinding import Packet, ShownStory, Survey  # noqa: E402
from analysis.survey.config import ExportConfig, ImportConfig  # noqa: E402
from analysis.survey.export import export_survey  # noqa: E402
from analysis.survey.html import render_survey_html  # noqa: E402
from analysis.survey.ingest import import_ratings  # noqa: E402
from analysis.survey.questions import instructions  # noqa: E402

from tests.analysis.survey.synthetic import write_run  # noqa: E402

SCRIPT_STORY = 'Before.\n<script>window.__pwned = "script";</script>\nAfter the script.'
IMG_STORY = 'An image: <img src=x onerror="window.__pwned = \'img\'"> and\n\nits second paragraph.'
BREAKOUT_STORY = '</script><script>window.__pwned = "breakout";</script><!-- <b>bold?</b>'


@pytest.fixture
def browser(monkeypatch, tmp_path):
    # Selenium Manager would try to download a browser or driver: forbid it outright.
    from selenium.webdriver.common import selenium_manager

    def no_downloads(*args, **kwargs):
        raise AssertionError("Selenium Manager must not run: the driver and browser paths are given")

    monkeypatch.setattr(selenium_manager.SeleniumManager, "binary_paths", no_downloads)
    monkeypatch.setenv("SE_OFFLINE", "true")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,1400",
                 f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-', dir=tmp_path)}"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {
        "download.default_directory": str(downloads), "download.prompt_for_download": False,
        "download.directory_upgrade": True, "safebrowsing.enabled": False,
    })
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.implicitly_wait(2)
    driver.downloads = downloads
    yield driver
    driver.quit()


def click_next(driver):
    driver.find_element(By.ID, "next").click()


def rate_page(driver, values: dict[str, float]):
    for criterion, value in values.items():
        slider = driver.find_element(By.CSS_SELECTOR, f'input[type=range][data-criterion="{criterion}"]')
        driver.execute_script(
            "arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input', {bubbles: true}));",
            slider, str(value))
    click_next(driver)


def wait_for_download(folder: Path, timeout: float = 20) -> Path:
    deadline = time.time() + timeout
    while time.time() < deadline:
        done = [p for p in folder.glob("*.csv") if not p.name.endswith(".crdownload")]
        if done:
            return done[0]
        time.sleep(0.2)
    raise AssertionError(f"no CSV downloaded into {folder} within {timeout} s: {list(folder.iterdir())}")


def test_fill_download_and_import_round_trip(browser, tmp_path):
    run = write_run(tmp_path / "run", extra_texts={9: SCRIPT_STORY, 17: IMG_STORY})
    export = export_survey(ExportConfig(run_dir=str(run), out_dir=str(tmp_path / "survey"), participants=10,
                                        stories_per_participant=3, stories_per_setting=4, seed=1,
                                        completion_url="https://app.prolific.com/submissions/complete?cc=TEST1"))
    packet = export.survey.packets[2]
    page = export.out_dir / "participant" / "survey.html"
    browser.get(page.as_uri() + f"?PROLIFIC_PID=pid-42&STUDY_ID=study-1&packet={packet.label}")

    assert "Two practice stories come first" in browser.find_element(By.CSS_SELECTOR, ".card").text
    click_next(browser)  # instructions
    assert browser.find_element(By.ID, "exemplar-text").text.startswith(export.survey.exemplar.text.split("\n")[0])
    click_next(browser)  # the exemplar
    rng = np.random.default_rng(5)
    entered = []
    shown_practice = export.survey.practice
    for story in shown_practice:
        assert browser.find_element(By.CSS_SELECTOR, ".story-page").get_attribute("data-kind") == "practice"
        rate_page(browser, {c: 3.0 for c in CRITERIA})
    click_next(browser)  # "practice done"
    for story in packet.stories:
        current = browser.find_element(By.CSS_SELECTOR, ".story-page")
        assert current.get_attribute("data-blinded-id") == story.blinded_id
        # A slider left alone blocks the page.
        browser.find_element(By.ID, "next").click()
        assert "Please rate" in browser.find_element(By.CSS_SELECTOR, ".message").text
        values = {c: round(float(rng.uniform(1, 5)), 3) for c in CRITERIA}
        entered.append((story.blinded_id, values))
        rate_page(browser, values)
    browser.find_element(By.NAME, "story_writing").send_keys("=SUM(1,2) is how I write")
    browser.find_element(By.CSS_SELECTOR, 'input[name="genai_familiarity"][value="4"]').click()
    browser.find_element(By.CSS_SELECTOR, 'input[name="genai_comfort"][value="2"]').click()
    click_next(browser)  # finish
    assert browser.find_element(By.ID, "participant-code").text == "pid-42"
    browser.find_element(By.ID, "download").click()
    csv_path = wait_for_download(browser.downloads)
    link = browser.find_element(By.ID, "completion-link")
    assert link.get_attribute("href") == "https://app.prolific.com/submissions/complete?cc=TEST1"

    result = import_ratings(ImportConfig(input=str(csv_path), out=str(tmp_path / "ratings.csv"),
                                         key=str(export.out_dir / "researcher" / "unblinding_key.csv")))
    ratings = result.ratings
    assert result.format.name == "html"
    assert list(ratings["blinded_id"]) == [blinded for blinded, _ in entered]
    assert list(ratings["evaluation_index"]) == [1, 2, 3]
    for (_, values), (_, row) in zip(entered, ratings.iterrows()):
        for criterion in CRITERIA:
            assert row[criterion] == values[criterion]
    assert (ratings["participant_id"] == "pid-42").all()
    assert (ratings["genai_familiarity"] == 4).all() and (ratings["genai_comfort"] == 2).all()
    assert ratings["story_writing"].iloc[0] == "=SUM(1,2) is how I write"
    design = pd.read_csv(export.out_dir / "researcher" / "design.csv", dtype=str)
    mine = design.loc[design["participant"] == packet.label].sort_values("position")
    assert list(ratings["story_id"]) == list(mine["story_id"])  # unblinded to the true stories


@pytest.mark.parametrize("practice", [0, 1])
def test_the_pages_follow_the_number_of_practice_stories(browser, tmp_path, practice):
    run = write_run(tmp_path / "run")
    export = export_survey(ExportConfig(run_dir=str(run), out_dir=str(tmp_path / "survey"), participants=10,
                                        stories_per_participant=3, stories_per_setting=4, seed=1, practice=practice))
    browser.get((export.out_dir / "participant" / "survey.html").as_uri() + "?packet=P01")
    shown = [p.text for p in browser.find_elements(By.CSS_SELECTOR, ".card p")]
    assert shown[:4] == list(instructions(practice))
    page_text = browser.find_element(By.TAG_NAME, "body").text
    assert "Two practice" not in page_text
    assert ("One practice story comes first" in page_text) == (practice == 1)
    click_next(browser)  # instructions
    click_next(browser)  # the exemplar
    kinds = []
    for _ in range(practice + 3):
        kinds.append(browser.find_element(By.CSS_SELECTOR, ".story-page").get_attribute("data-kind"))
        rate_page(browser, {c: 3.0 for c in CRITERIA})
        if practice and len(kinds) == practice:
            assert browser.find_element(By.TAG_NAME, "h2").text == "Practice done"
            click_next(browser)
    assert kinds == ["practice"] * practice + ["story"] * 3


def test_the_sliders_show_the_scale_of_the_criteria(browser, tmp_path):
    page = tmp_path / "survey.html"
    page.write_text(render_survey_html(escaping_survey(), "t"), encoding="utf-8")
    browser.get(page.as_uri() + "?packet=P01")
    click_next(browser)
    click_next(browser)
    ticks = [t.text for t in browser.find_elements(By.CSS_SELECTOR, ".ticks .scale span")]
    assert ticks == ["1", "2", "3", "4", "5"] * len(CRITERIA)
    anchors = [a.text for a in browser.find_elements(By.CSS_SELECTOR, ".slider-row .anchor")]
    assert anchors[:2] == ["1 \u2013 Not at all novel", "Very novel \u2013 5"]
    assert "rate from 1 to 5" in browser.find_element(By.TAG_NAME, "body").text


def escaping_survey() -> Survey:
    return Survey(
        survey_id="Sv2xyz",
        exemplar=ShownStory("Ex2xyz", "The exemplar.\n" + BREAKOUT_STORY),
        practice=(ShownStory("Pr2xyz", IMG_STORY),),
        packets=(Packet("P01", (ShownStory("St2xyz", SCRIPT_STORY), ShownStory("St3xyz", BREAKOUT_STORY))),),
    )


def test_story_html_runs_nothing_and_shows_as_text(browser, tmp_path):
    page = tmp_path / "survey.html"
    page.write_text(render_survey_html(escaping_survey(), "Escaping <i>check</i>"), encoding="utf-8")
    browser.get(page.as_uri() + "?packet=P01")
    assert browser.title == "Escaping <i>check</i>"
    click_next(browser)
    assert browser.find_element(By.ID, "exemplar-text").text == "The exemplar.\n" + BREAKOUT_STORY
    click_next(browser)

    def story_text():
        return browser.find_element(By.CSS_SELECTOR, ".story .story-text")

    assert story_text().text == IMG_STORY  # literal, paragraph break kept
    assert story_text().find_elements(By.TAG_NAME, "img") == []
    rate_page(browser, {c: 2.0 for c in CRITERIA})
    click_next(browser)
    assert story_text().text == SCRIPT_STORY
    assert story_text().find_elements(By.TAG_NAME, "script") == []
    # line breaks render: the element is taller than one line of text
    assert story_text().size["height"] > 3 * 20
    rate_page(browser, {c: 2.0 for c in CRITERIA})
    assert story_text().text == BREAKOUT_STORY
    assert browser.find_elements(By.TAG_NAME, "b") == []
    assert browser.execute_script("return typeof window.__pwned") == "undefined"
    assert len(browser.find_elements(By.TAG_NAME, "script")) == 2  # the data and the page script, no more


def test_unknown_packet_shows_an_error(browser, tmp_path):
    page = tmp_path / "survey.html"
    page.write_text(render_survey_html(escaping_survey(), "t"), encoding="utf-8")
    browser.get(page.as_uri() + "?packet=P09")
    assert "This link is not valid" in browser.find_element(By.TAG_NAME, "h2").text
