"""The one error type the CLI turns into a one-line message."""


class PrepError(Exception):
    """Bad input or a bad option, described in one line for the user."""
