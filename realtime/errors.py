"""The one exception type that reaches the user: a one-line message that says what to do."""


class UserError(Exception):
    """A problem with the user's input or set-up. The CLI prints ``str(err)`` on one line and exits non-zero."""

    exit_code = 2
