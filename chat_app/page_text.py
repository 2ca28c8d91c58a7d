"""Chainlit's page texts, adapted to what adapterlab asks for and how it names things.

- Login: Chainlit's form asks for an "Email address" (me@example.com); the app's login is a user
  name (``ADAPTERLAB_APP_USER``). A wrong password showed the generic "Unable to sign in": the form
  looks its error up by the response's status text ("Unauthorized") or the server's error name
  (``credentialssignin``), and the translation files know neither, only ``credentialsSignin``.
  public/adapterlab.js hides the raw "Unauthorized: credentialssignin" toast shown beside it.
- History: Chainlit's English says "thread" ("Rename Thread", "No threads found"); the app, its
  README and Chainlit's own sidebar buttons ("Search chats") say "chat".

The translations are changed as they are served, so the keys a Chainlit upgrade adds are kept.
"""

from __future__ import annotations

import copy
import re

ENGLISH_USER_FIELD = {"label": "User name", "placeholder": "", "required": "Enter your user name"}
ENGLISH_WRONG_LOGIN = "Wrong user name or password."
_THREAD = re.compile(r"\b([Tt])hread(s?)\b")


def adapt(translation: dict, language: str) -> dict:
    """``translation`` (Chainlit's, for ``language``) with the texts above; a copy."""
    english = language.lower().startswith("en")
    adapted = _chats_not_threads(copy.deepcopy(translation)) if english else copy.deepcopy(translation)
    login = adapted.get("auth", {}).get("login", {})
    errors = login.get("errors")
    if isinstance(errors, dict):
        wrong_login = ENGLISH_WRONG_LOGIN if english else errors.get(
            "credentialsSignin", errors.get("default", ENGLISH_WRONG_LOGIN))
        errors["unauthorized"] = errors["credentialssignin"] = wrong_login
    user_field = login.get("form", {}).get("email")
    if isinstance(user_field, dict) and english:
        user_field.update(ENGLISH_USER_FIELD)
    return adapted


def _chats_not_threads(value):
    if isinstance(value, dict):
        return {key: _chats_not_threads(item) for key, item in value.items()}
    if isinstance(value, str):
        return _THREAD.sub(lambda m: ("C" if m[1] == "T" else "c") + "hat" + m[2], value)
    return value


def install() -> bool:
    """Wrap Chainlit's translation loader; False if this Chainlit version has none."""
    from chainlit.config import ChainlitConfig  # a pydantic model: its instance takes no new attributes

    original = getattr(ChainlitConfig, "load_translation", None)
    if original is None or getattr(original, "_adapterlab_page_text", False):
        return original is not None

    def load_translation(self, language: str):
        return adapt(original(self, language), language)

    load_translation._adapterlab_page_text = True
    ChainlitConfig.load_translation = load_translation
    return True
