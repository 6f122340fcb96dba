from metrics.text import degenerate_notes, has_content, normalise_line_breaks, replace_lone_surrogates, word_tokens


def test_line_breaks_from_the_survey_export_become_newlines():
    assert normalise_line_breaks("One.<br><br>Two.<BR/>Three.<br />Four.") == "One.\n\nTwo.\nThree.\nFour."
    assert normalise_line_breaks("\ufeffa\r\nb\rc") == "a\nb\nc"


def test_word_tokens_are_words_and_punctuation_marks():
    assert word_tokens("Hi, you! Maria's dog didn't.") == ["Hi", ",", "you", "!", "Maria's", "dog", "didn't", "."]
    assert word_tokens("Café — naïve") == ["Café", "—", "naïve"]
    assert word_tokens("") == []


def test_content():
    assert not has_content("")
    assert not has_content(" \n\t ")
    assert has_content("a")


def test_degenerate_notes():
    assert degenerate_notes("") == ["empty text"]
    assert degenerate_notes("  \n ") == ["whitespace-only text"]
    assert degenerate_notes("Hello") == ["one-word text"]
    assert degenerate_notes("Ünïcödé story here") == ["non-ASCII characters"]
    assert degenerate_notes("<p>A <b>bold</b> tale</p>") == ["HTML markup (measured as written)"]
    assert degenerate_notes("word " * 30000)[0].startswith("very long text")
    assert degenerate_notes("A normal story. It ends.") == []


def test_lone_surrogates_are_replaced():
    assert replace_lone_surrogates("a\ud800b") == "a\ufffdb"
    assert replace_lone_surrogates("ok 🐉") == "ok 🐉"
