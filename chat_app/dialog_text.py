"""What Chainlit's dialogs say, made true of this app (Chainlit's page texts, as served).

- "New chat" asks first (``confirm_new_chat``), saying "This will clear your current chat history.
  Are you sure you want to continue?". Signed in, nothing is cleared: the chat stays in the history
  sidebar, and only an answer still being written in it is stopped (``on_chat_end`` in app.py).
  Without login, the conversation is indeed gone (nothing keeps it); the English says so plainly.
- The settings dialog's "Reset" puts back the values the dialog had when it opened (Chainlit 2.12's
  ``ChatSettings`` restores its snapshot from the opening), so it only undoes unsaved edits: a
  confirmed system prompt stayed after Reset and Confirm. It is called "Undo changes"; the panel's
  "Restore the profile's defaults" switch (``handlers.RESTORE_DEFAULTS``) goes back to the defaults.

Other languages get these English texts where Chainlit's own says something untrue (the app's own
words, the settings' labels among them, are English anyway); their words for a new chat without
login are kept. The translations are changed as they are served (as ``page_text.py`` does), so the
keys a Chainlit upgrade adds are kept.
"""

from __future__ import annotations

import copy
import functools

NEW_CHAT_KEPT = ("This opens a new, empty chat. The current one stays in your chat history, in the "
                 "sidebar; an answer still being written in it is stopped.")
NEW_CHAT_NOT_KEPT = ("This opens a new, empty chat. The current conversation is not kept (without "
                     "signing in there is no chat history), and an answer still being written is stopped.")
UNDO_CHANGES = "Undo changes"


def adapt(translation: dict, language: str, history: bool = False) -> dict:
    """``translation`` (Chainlit's, for ``language``) with the texts above; a copy. ``history``: the
    app keeps chats (password login is on)."""
    adapted = copy.deepcopy(translation)
    dialog = adapted.get("navigation", {}).get("newChat", {}).get("dialog")
    if isinstance(dialog, dict) and (history or language.lower().startswith("en")):
        dialog["description"] = NEW_CHAT_KEPT if history else NEW_CHAT_NOT_KEPT
    actions = adapted.get("common", {}).get("actions")
    if isinstance(actions, dict) and "reset" in actions:
        actions["reset"] = UNDO_CHANGES
    return adapted


def install(history: bool = False) -> bool:
    """Wrap Chainlit's translation loader; False if this Chainlit version has none. ``history``: the
    app keeps chats (password login is on)."""
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
        return adapt(original(self, language), language, history)

    load_translation._adapterlab_dialog_text = True
    ChainlitConfig.load_translation = load_translation
    return True
