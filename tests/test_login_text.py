"""The login form's texts as the page gets them: a user name, and a wrong password said as such."""

import json
from pathlib import Path

import chainlit
import pytest

from chat_app.login_text import ENGLISH_WRONG_LOGIN, adapt

TRANSLATIONS = Path(chainlit.__file__).parent / "translations"


def chainlit_translation(language: str) -> dict:
    return json.loads((TRANSLATIONS / f"{language}.json").read_text(encoding="utf-8"))


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


def test_a_translation_without_login_texts_is_served_as_it_is():
    assert adapt({"common": {"ok": "OK"}}, "en-US") == {"common": {"ok": "OK"}}
