"""The one exception type for user errors: the CLI prints it as one line and exits non-zero."""


class T3SError(Exception):
    """A problem with the user's input (file, field, key, flag); never a bug in t3s-nemo."""
