"""Chainlit's texts as the page gets them: a user name to log in, a wrong password said as such, and
chats, not threads."""

import json
import re
from pathlib import Path

import chainlit
import pytest

from chat_app.page_text import (
    ENGLISH_WRONG_LOGIN,
    NO_DIRECTIVE,
    adapt,
    shown,
    shown_piece,
)

TRANSLATIONS = Path(chainlit.__file__).parent / "translations"


def chainlit_translation(language: str) -> dict:
    return json.loads((TRANSLATIONS / f"{language}.json").read_text(encoding="utf-8"))


def strings(value) -> list[str]:
    if isinstance(value, dict):
        return [text for item in value.values() for text in strings(item)]
    return [value] if isinstance(value, str) else []


def test_english_asks_for_a_user_name_and_names_a_wrong_login():
    original = chainlit_translation("en-US")
    login = adapt(original, "en-US")["auth"]["login"]
    assert login["form"]["email"]["label"] == "User name" and login["form"]["email"]["placeholder"] == ""
    # the form looks the error up by the status text ("Unauthorized") or the server's error name
    assert login["errors"]["unauthorized"] == login["errors"]["credentialssignin"] == ENGLISH_WRONG_LOGIN
    assert original["auth"]["login"]["form"]["email"]["label"] == "Email address"  # not changed in place


@pytest.mark.parametrize("language", ["de-DE", "fr-FR", "ja"])
def test_other_languages_keep_their_own_words_for_a_wrong_login(language):
    original = chainlit_translation(language)
    login = adapt(original, language)["auth"]["login"]
    assert login["errors"]["unauthorized"] == original["auth"]["login"]["errors"]["credentialsSignin"]
    assert login["form"]["email"] == original["auth"]["login"]["form"]["email"]


def test_english_calls_a_thread_a_chat():
    history = adapt(chainlit_translation("en-US"), "en-US")["threadHistory"]
    assert history["thread"]["actions"]["rename"]["title"] == "Rename Chat"
    assert history["thread"]["actions"]["rename"]["description"] == "Enter a new name for this chat"
    assert history["sidebar"]["empty"] == "No chats found"
    assert not [text for text in strings(history) if "hread" in text]


def test_a_translation_without_login_texts_is_served_as_it_is():
    assert adapt({"common": {"ok": "OK"}}, "en-US") == {"common": {"ok": "OK"}}


# --- colons the page's markdown read as directives ---------------------------------------------

def test_a_word_after_a_colon_is_kept_from_the_pages_directives():
    """remark-directive read "EGFR:negative" as a directive named "negative" and dropped it."""
    typed = "Dx:NSCLC, stage IV. EGFR:negative. Plan:pembrolizumab. Mets:bone, liver. ::leaf"
    out = shown(typed)
    assert out.replace(NO_DIRECTIVE, "") == typed
    assert "EGFR:" + NO_DIRECTIVE + "negative" in out and "::" + NO_DIRECTIVE + "leaf" in out
    assert not re.search(r":[A-Za-z]", out)  # no colon left before a directive's name


def test_colons_that_start_no_directive_and_code_are_left_as_they_are():
    for text in ["10:30, http://example.com, a: b, x:1", "[mail](mailto:me@example.com) <mailto:me@example.com>",
                 "in code `key:value` too", "```json\n{\"Dx\": \"a:b\"}\n```", "~~~\nNote:this\n~~~"]:
        assert shown(text) == text, text
    assert shown("```\nkey:value\n```\nNote:this") == "```\nkey:value\n```\nNote:" + NO_DIRECTIVE + "this"
    assert shown("\\`EGFR:neg\\`") == "\\`EGFR:" + NO_DIRECTIVE + "neg\\`"  # escaped backticks: no code span


def test_a_streamed_piece_after_a_colon_is_kept_too():
    assert shown_piece("Note:", "this") == NO_DIRECTIVE + "this"
    assert shown_piece("Note", ":this x:y") == ":" + NO_DIRECTIVE + "this x:" + NO_DIRECTIVE + "y"
    assert shown_piece("at 10:", "30") == "30"
