"""The self-contained offline HTML survey: one file, inline CSS and JS, no network.

The survey data (texts, packets, questions) is embedded as JSON in a
``<script type="application/json">`` element. JSON is not HTML: a story
containing ``</script>`` or ``<!--`` would end or break that element, so every
``<``, ``>`` and ``&`` in the JSON is written as a ``\\u003c``-style escape
(still the same string once parsed). The page script puts all text into the
page with ``textContent``. A Content-Security-Policy allows only the page's
own script and style (by hash) and no network at all, as a second wall.

The page takes ``?packet=P07`` (or ``7``) to choose the packet, and Prolific's
``PROLIFIC_PID``, ``STUDY_ID`` and ``SESSION_ID``. Without ``packet`` it picks
one from a hash of ``PROLIFIC_PID`` (stable per person, but only balanced on
average) or at random: hand out one link per packet for a balanced design.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import asdict
from importlib import resources

import jinja2
from markupsafe import Markup

from analysis.survey.blinding import Survey
from analysis.survey.questions import CRITERIA, PARTICIPANT_QUESTIONS, SCALE, exemplar_note, instructions

# The columns of the CSV the page downloads (one row per rated story, practice included).
HTML_CSV_COLUMNS = (
    "survey_id", "participant_id", "packet", "packet_source", "packet_size", "kind", "position", "blinded_id",
    *(c.name for c in CRITERIA), "seconds_on_page", *(q.name for q in PARTICIPANT_QUESTIONS),
    "prolific_study_id", "prolific_session_id", "started_at", "finished_at",
)

_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def json_for_script(value) -> str:
    """JSON that is safe inside a <script> element (no '</script', no '<!--', no raw line separators)."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    return re.sub("[<>&\u2028\u2029]", lambda match: _JSON_ESCAPES[match.group()], text)


def survey_data(survey: Survey, title: str, completion_url: str | None, consent_text: str | None,
                slider_step: float) -> dict:
    return {
        "survey_id": survey.survey_id,
        "title": title,
        "instructions": list(instructions(len(survey.practice))),
        "exemplar_note": exemplar_note(),
        "consent_text": consent_text,
        "criteria": [asdict(c) for c in CRITERIA],
        "participant_questions": [asdict(q) for q in PARTICIPANT_QUESTIONS],
        "scale": list(SCALE),
        "slider_step": slider_step,
        "exemplar": {"id": survey.exemplar.blinded_id, "text": survey.exemplar.text},
        "practice": [{"id": s.blinded_id, "text": s.text} for s in survey.practice],
        "packet_order": [p.label for p in survey.packets],
        "packets": {p.label: [{"id": s.blinded_id, "text": s.text} for s in p.stories] for p in survey.packets},
        "completion_url": completion_url,
        "csv_columns": list(HTML_CSV_COLUMNS),
    }


def _sha256_source(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def render_survey_html(survey: Survey, title: str, completion_url: str | None = None,
                       consent_text: str | None = None, slider_step: float = 0.001) -> str:
    template_text = resources.files("analysis.survey").joinpath("templates/survey.html").read_text(encoding="utf-8")
    template = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string(template_text)
    data = survey_data(survey, title, completion_url, consent_text, slider_step)
    page = template.render(title=title, data_json=Markup(json_for_script(data)))
    # Allow exactly the page's own inline script and style, nothing else, no network.
    scripts = re.findall(r"<script>(.*?)</script>", page, flags=re.S)
    styles = re.findall(r"<style>(.*?)</style>", page, flags=re.S)
    policy = "; ".join([
        "default-src 'none'",
        "script-src " + " ".join(_sha256_source(s) for s in scripts),
        "style-src " + " ".join(_sha256_source(s) for s in styles),
        "img-src 'none'", "connect-src 'none'", "form-action 'none'", "base-uri 'none'",
    ])
    return page.replace("__CSP__", policy, 1)
