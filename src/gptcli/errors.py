"""The one exception type the CLI turns into `error: ...` and exit code 1."""


class GptError(Exception):
    """A problem the user can fix (bad input, missing model, ...); its message is shown as is."""
