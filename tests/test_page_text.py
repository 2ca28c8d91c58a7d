"""Chainlit's texts as the page gets them: a user name to log in, a wrong password said as such, and
chats, not threads."""

import json
from pathlib import Path

import chainlit
import pytest

from chat_app.page_text import ENGLISH_WRONG_LOGIN, adapt

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
