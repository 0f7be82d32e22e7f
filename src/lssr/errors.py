"""The package's one error type; it imports nothing of lssr, so every module (and ``lssr`` itself) can use it."""

import re
from typing import Iterable

#: A fix spelled as a keyword of a Python call, ``diagnose(..., bn='eval')``, with the alternative
#: ``model.eval() before the call, or`` that only a Python caller has.
_KEYWORD_FIX = re.compile(r"(?:model\.eval\(\) before the call, or )?\b\w+\(\.\.\., (\w+)=(['\"]?)([^'\")]*)\2\)")


class LssrError(Exception):
    """A user-facing error: the message names the file, key or value at fault and the fix."""

    def for_command_line(self, options: Iterable[str]) -> str:
        """The message as a command line with the given ``options`` (argparse's names, e.g. ``bn``,
        ``hvp_mode``) says it: a fix spelled as a keyword of the Python call, ``model.eval() before the call, or
        diagnose(..., bn='eval')``, becomes the command's option, ``--bn eval``."""
        known = set(options)

        def option(m: re.Match) -> str:
            return f"--{m[1].replace('_', '-')} {m[3]}" if m[1] in known else m[0]

        return _KEYWORD_FIX.sub(option, str(self))
