"""What Chainlit's dialogs say, made true of this app (Chainlit's page texts, as served).

- The settings dialog's "Reset" puts back the values the dialog had when it opened (Chainlit 2.12's
  ``ChatSettings`` restores its snapshot from the opening), so it only undoes unsaved edits: a
  confirmed system prompt stayed after Reset and Confirm. It is called "Undo changes"; the panel's
  "Restore the profile's defaults" switch (``handlers.RESTORE_DEFAULTS``) goes back to the defaults.

Other languages get these English texts where Chainlit's own says something untrue (the app's own
words, the settings' labels among them, are English anyway). The translations are changed as they
are served (as ``page_text.py`` does), so the keys a Chainlit upgrade adds are kept.
"""

from __future__ import annotations

import copy
import functools

UNDO_CHANGES = "Undo changes"


def adapt(translation: dict, language: str) -> dict:
    """``translation`` (Chainlit's, for ``language``) with the texts above; a copy."""
    adapted = copy.deepcopy(translation)
    actions = adapted.get("common", {}).get("actions")
    if isinstance(actions, dict) and "reset" in actions:
        actions["reset"] = UNDO_CHANGES
    return adapted


def install() -> bool:
    """Wrap Chainlit's translation loader; False if this Chainlit version has none."""
    from chainlit.config import ChainlitConfig  # a pydantic model: its instance takes no new attributes

    original = getattr(ChainlitConfig, "load_translation", None)
    if original is None:
        return False
    if getattr(original, "_adapterlab_dialog_text", False):  # installed (the app was imported again)
        return True

    # functools.wraps keeps the wrapped loader's attributes, page_text's mark among them, so that an
    # import of the app again (`chainlit run -w`) finds both installed and wraps nothing twice
    @functools.wraps(original)
    def load_translation(self, language: str):
        return adapt(original(self, language), language)

    load_translation._adapterlab_dialog_text = True
    ChainlitConfig.load_translation = load_translation
    return True
