"""One exception type for mistakes a user can make: the CLI prints it as one line, no traceback."""


class MamfError(Exception):
    """A problem with the user's input (data, config, model name) rather than a bug in mamf."""
