"""The package's one error type; it imports nothing, so every module (and ``lssr`` itself) can use it."""


class LssrError(Exception):
    """A user-facing error: the message names the file, key or value at fault and the fix."""
