"""The one exception type users see.

Everything that is the user's fault (a wrong path, a bad size, a file in the wrong slot) raises
`AnimaError` with a single actionable line. The CLI prints that line and exits non-zero; anything
else escaping is a bug in anima and keeps its traceback.
"""


class AnimaError(Exception):
    """A user-facing error: one line, says what is wrong and what to do."""
