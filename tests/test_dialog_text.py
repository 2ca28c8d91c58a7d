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


def test_installed_once_beside_page_text_when_the_app_is_imported_again(monkeypatch):
    from chainlit.config import ChainlitConfig

    def chainlits(self, language):
        return {"common": {"actions": {"reset": "Reset"}},
                "threadHistory": {"sidebar": {"empty": "No threads found"}}}

    monkeypatch.setattr(ChainlitConfig, "load_translation", chainlits)  # put back after the test
    assert page_text.install() and dialog_text.install()
    installed = ChainlitConfig.load_translation
    assert page_text.install() and dialog_text.install()  # `chainlit run -w` imports the app again
    assert ChainlitConfig.load_translation is installed
    served = ChainlitConfig.load_translation(None, "en-US")
    assert served == {"common": {"actions": {"reset": "Undo changes"}},
                      "threadHistory": {"sidebar": {"empty": "No chats found"}}}
