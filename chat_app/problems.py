"""The one exception for input the app refuses: a typed message (``handlers``), an attached file
(``uploads``), or any message while the model is not there to answer it (``app.py``). ``app.py``
shows its message in the chat as it is.
"""

from __future__ import annotations


class InputProblem(ValueError):
    """Input the app refuses; the message is shown in the chat as it is."""
