"""The one exception type users see.

Everything that is the user's fault (a wrong path, a bad size, a file in the wrong slot) raises
`AnimaError` with a single actionable line. The library names the *setting* involved in its words
("the hires scale must be ..."), and may tag the error with the setting's name (`setting`, a
recipe field or flat setting such as ``"hires_scale"``); each front end phrases that for its users:
the CLI adds the flag (``--hires-scale``), the server the request field. Anything else escaping is
a bug in anima and keeps its traceback.
"""

from __future__ import annotations


class AnimaError(Exception):
    """A user-facing error: one line, says what is wrong and what to do.

    `setting`: the recipe field, flat setting or option the error is about (None: not one)."""

    def __init__(self, message: str, *, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting
