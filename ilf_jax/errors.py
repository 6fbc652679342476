"""The one exception type for bad user input: the CLI prints it as a single line and exits non-zero."""


class IlfError(Exception):
    """A problem with the user's input (file, record, field), reported in one line."""
