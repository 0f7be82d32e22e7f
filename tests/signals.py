"""Helpers for tests that send a user's Ctrl-C to a child process."""

import signal


def default_sigint() -> None:
    """``preexec_fn`` for a child that must react to SIGINT like a program started from a shell: a Python child
    whose parent ignores SIGINT inherits SIG_IGN and would never see the KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
