"""Chainlit's page texts, adapted to what adapterlab asks for and how it names things.

- Login: Chainlit's form asks for an "Email address" (me@example.com); the app's login is a user
  name (``ADAPTERLAB_APP_USER``). A wrong password showed the generic "Unable to sign in": the form
  looks its error up by the response's status text ("Unauthorized") or the server's error name
  (``credentialssignin``), and the translation files know neither, only ``credentialsSignin``.
  public/adapterlab.js hides the raw "Unauthorized: credentialssignin" toast shown beside it.
- History: Chainlit's English says "thread" ("Rename Thread", "No threads found"); the app, its
  README and Chainlit's own sidebar buttons ("Search chats") say "chat".
- Colons: the page's markdown (remark-directive, always on in Chainlit 2.12, issue #1930) reads
  ``word:word`` as a "text directive" and drops it: ``EGFR:negative`` showed as "EGFR". ``shown``
  keeps such text in the app's messages; the user's own bubble is not markdown at all
  (``user_message_markdown = false`` in .chainlit/config.toml), so it shows the text as typed.

The translations are changed as they are served, so the keys a Chainlit upgrade adds are kept.
"""

from __future__ import annotations

import copy
import re

ENGLISH_USER_FIELD = {"label": "User name", "placeholder": "", "required": "Enter your user name"}
ENGLISH_WRONG_LOGIN = "Wrong user name or password."
_THREAD = re.compile(r"\b([Tt])hread(s?)\b")

# WORD JOINER: invisible, and not the name (an ASCII letter first) that a directive needs after its
# colon. Not U+200B (ZERO WIDTH SPACE): Chainlit's page shows that as a blinking cursor.
NO_DIRECTIVE = "\u2060"
_DIRECTIVE = re.compile(r":(?=[A-Za-z])")
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")
# parsed as code or as a link's address, never as a directive: an inline code span, a link's
# destination "](…)", an autolink "<scheme:…>"
_NOT_TEXT = re.compile(r"(?<![\\`])(`+)(?!`).+?(?<!`)\1(?!`)"
                       r"|(?<!\\)\]\([^()\s]*"
                       r"|<[A-Za-z][A-Za-z0-9+.-]{1,31}:[^\s<>]*>", re.DOTALL)


def shown(markdown: str) -> str:
    """``markdown`` as the page shows it as written: a word joiner after each colon that would start
    a directive (``Note:this``, ``::name``). Code blocks, code spans and link addresses are left as
    they are (the page reads no directive there, and a code block's copy button copies its text)."""
    if ":" not in markdown:
        return markdown
    out, prose, fence = [], [], None
    for line in markdown.splitlines(keepends=True):
        found = _FENCE.match(line)
        if fence is None and found:
            out.append(_prose_shown("".join(prose)))
            prose, fence = [], found.group(1)
            out.append(line)
        elif fence is not None:
            out.append(line)
            if found and found.group(1)[0] == fence[0] and len(found.group(1)) >= len(fence) \
                    and not line.strip()[len(found.group(1)):]:
                fence = None
        else:
            prose.append(line)
    out.append(_prose_shown("".join(prose)))
    return "".join(out)


def _prose_shown(text: str) -> str:
    parts, start = [], 0
    for kept in _NOT_TEXT.finditer(text):
        parts += [_DIRECTIVE.sub(":" + NO_DIRECTIVE, text[start:kept.start()]), kept.group()]
        start = kept.end()
    parts.append(_DIRECTIVE.sub(":" + NO_DIRECTIVE, text[start:]))
    return "".join(parts)


def shown_piece(before: str, piece: str) -> str:
    """``piece`` of a streamed answer, after ``before``, with ``shown``'s word joiners (code is not
    told apart while it streams: the finished answer is sent whole, through ``shown``)."""
    piece = _DIRECTIVE.sub(":" + NO_DIRECTIVE, piece)
    return NO_DIRECTIVE + piece if before.endswith(":") and piece[:1].isascii() and piece[:1].isalpha() else piece


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
