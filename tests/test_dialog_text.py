"""Chainlit's dialog texts as the page gets them, made true of this app (chat_app/dialog_text.py)."""

import json
from pathlib import Path

import chainlit
import pytest

from chat_app import dialog_text, page_text

TRANSLATIONS = Path(chainlit.__file__).parent / "translations"


def chainlit_translation(language: str) -> dict:
    return json.loads((TRANSLATIONS / f"{language}.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("language", ["en-US", "de-DE", "fr-FR", "ja"])
def test_the_settings_reset_button_says_it_undoes_changes(language):
    # Chainlit's Reset restores the values the dialog opened with, not the defaults ("Réinitialiser",
    # "Zurücksetzen" say the same untrue thing); the panel's own switch restores the defaults
    original = chainlit_translation(language)
    assert dialog_text.adapt(original, language)["common"]["actions"]["reset"] == "Undo changes"
    assert original["common"]["actions"]["reset"] != "Undo changes"  # not changed in place


def test_new_chat_says_the_chat_stays_in_the_history_when_it_does():
    english = chainlit_translation("en-US")
    assert "clear your current chat history" in english["navigation"]["newChat"]["dialog"]["description"]
    signed_in = dialog_text.adapt(english, "en-US", history=True)["navigation"]["newChat"]["dialog"]
    assert signed_in["description"] == dialog_text.NEW_CHAT_KEPT
    assert "stays in your chat history" in signed_in["description"] and "clear" not in signed_in["description"]
    assert signed_in["title"] == english["navigation"]["newChat"]["dialog"]["title"]
    without_login = dialog_text.adapt(english, "en-US", history=False)["navigation"]["newChat"]["dialog"]
    assert without_login["description"] == dialog_text.NEW_CHAT_NOT_KEPT


@pytest.mark.parametrize("language", ["de-DE", "fr-FR", "ja", "zh-CN"])
def test_other_languages_are_told_the_truth_in_english_when_the_chat_is_kept(language):
    # "Es werden die aktuellen Nachrichten gelöscht", "Cela effacera votre historique": untrue signed in
    original = chainlit_translation(language)
    signed_in = dialog_text.adapt(original, language, history=True)["navigation"]["newChat"]["dialog"]
    assert signed_in["description"] == dialog_text.NEW_CHAT_KEPT
    assert signed_in["title"] == original["navigation"]["newChat"]["dialog"]["title"]
    # without login the conversation is gone, as their own words say
    without_login = dialog_text.adapt(original, language)["navigation"]["newChat"]["dialog"]
    assert without_login == original["navigation"]["newChat"]["dialog"]


def test_installed_once_beside_page_text_when_the_app_is_imported_again(monkeypatch):
    from chainlit.config import ChainlitConfig

    def chainlits(self, language):
        return {"common": {"actions": {"reset": "Reset"}},
                "navigation": {"newChat": {"dialog": {"description": "This will clear your current chat history."}}},
                "threadHistory": {"sidebar": {"empty": "No threads found"}}}

    monkeypatch.setattr(ChainlitConfig, "load_translation", chainlits)  # put back after the test
    assert page_text.install() and dialog_text.install(history=True)
    installed = ChainlitConfig.load_translation
    assert page_text.install() and dialog_text.install(history=True)  # `chainlit run -w` imports the app again
    assert ChainlitConfig.load_translation is installed
    served = ChainlitConfig.load_translation(None, "en-US")
    assert served == {"common": {"actions": {"reset": "Undo changes"}},
                      "navigation": {"newChat": {"dialog": {"description": dialog_text.NEW_CHAT_KEPT}}},
                      "threadHistory": {"sidebar": {"empty": "No chats found"}}}
