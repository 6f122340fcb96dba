"""Text as the metrics see it: line-break normalisation, word tokens, and notes
on degenerate stories.

Generated text is untrusted: it may be empty, one word, megabytes long, in any
script, or full of HTML. Nothing here strips markup (that would measure a
different text than the model wrote); it only says what it saw.
"""

from __future__ import annotations

import re

LINE_BREAK_TAG = re.compile(r"<br\s*/?>", re.IGNORECASE)
HTML_TAG = re.compile(r"</?[a-zA-Z][a-zA-Z0-9]*(?:\s[^<>]*)?/?>")
# A word is a run of letters/digits (with inner apostrophes: "didn't", "Maria's");
# every other non-space character is a token of its own.
WORD_TOKEN = re.compile(r"\w+(?:['\u2019]\w+)*|[^\w\s]")

VERY_LONG_CHARS = 100_000
# Only an unpaired surrogate can be in a str (JSON "\ud800" decodes to one); it is not encodable text.
LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def normalise_line_breaks(text: str) -> str:
    """``<br>`` tags (as in the paper's survey export) and CR/CRLF become ``\\n``; a BOM is dropped."""
    text = text.lstrip("\ufeff")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return LINE_BREAK_TAG.sub("\n", text)


def replace_lone_surrogates(text: str) -> str:
    """Unpaired UTF-16 surrogates become U+FFFD: tokenizers (and UTF-8) cannot take them."""
    return LONE_SURROGATE.sub("\ufffd", text)


def word_tokens(text: str) -> list[str]:
    """Words and punctuation marks, case kept: ``"Hi, you!"`` -> ``["Hi", ",", "you", "!"]``."""
    return WORD_TOKEN.findall(text)


def has_content(text: str) -> bool:
    """False for empty and whitespace-only text, which has nothing to embed."""
    return bool(text.strip())


def degenerate_notes(text: str) -> list[str]:
    """What is unusual about a text, in words a log reader understands (empty list: nothing)."""
    if not text:
        return ["empty text"]
    if not text.strip():
        return ["whitespace-only text"]
    notes = []
    words = word_tokens(text)
    if len(words) == 1:
        notes.append("one-word text")
    if len(text) > VERY_LONG_CHARS:
        notes.append(f"very long text (over {VERY_LONG_CHARS} characters)")
    if not text.isascii():
        notes.append("non-ASCII characters")
    if HTML_TAG.search(text):
        notes.append("HTML markup (measured as written)")
    return notes
