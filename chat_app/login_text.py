"""Make Chainlit's login form say what adapterlab's login asks for.

Chainlit's form asks for an "Email address" (me@example.com), while the app's login is a user name
(``ADAPTERLAB_APP_USER``). And a wrong password showed Chainlit's generic "Unable to sign in": the
form looks its error up by the response's status text ("Unauthorized") or the server's error
(``credentialssignin``), and the translation files know neither, only ``credentialsSignin``. The page's translations are
changed as they are served (every language gets the alias; English gets the user-name wording), so a
Chainlit upgrade that adds keys keeps them. public/adapterlab.js hides the raw
"Unauthorized: credentialssignin" toast that Chainlit shows beside the form's own message.
"""

from __future__ import annotations

import copy

ENGLISH_USER_FIELD = {"label": "User name", "placeholder": "", "required": "Enter your user name"}
ENGLISH_WRONG_LOGIN = "Wrong user name or password."


def adapt(translation: dict, language: str) -> dict:
    """``translation`` (Chainlit's, for ``language``) with the login texts above; a copy."""
    adapted = copy.deepcopy(translation)
    login = adapted.get("auth", {}).get("login", {})
    errors = login.get("errors")
    if isinstance(errors, dict):
        english = language.lower().startswith("en")
        wrong_login = ENGLISH_WRONG_LOGIN if english else errors.get(
            "credentialsSignin", errors.get("default", ENGLISH_WRONG_LOGIN))
        errors["unauthorized"] = errors["credentialssignin"] = wrong_login
    user_field = login.get("form", {}).get("email")
    if isinstance(user_field, dict) and language.lower().startswith("en"):
        user_field.update(ENGLISH_USER_FIELD)
    return adapted


def install() -> bool:
    """Wrap Chainlit's translation loader; False if this Chainlit version has none."""
    from chainlit.config import ChainlitConfig  # a pydantic model: its instance takes no new attributes

    original = getattr(ChainlitConfig, "load_translation", None)
    if original is None or getattr(original, "_adapterlab_login", False):
        return original is not None

    def load_translation(self, language: str):
        return adapt(original(self, language), language)

    load_translation._adapterlab_login = True
    ChainlitConfig.load_translation = load_translation
    return True
