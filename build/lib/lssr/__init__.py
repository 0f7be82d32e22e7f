"""lssr: replication of the interaction-aware sharpness / LSSR paper (ICLR 2023).

Modules, one per concept: data, models, losses, config, train, curvature, diagnostics,
scaling, figures/, claims, cli. See docs/ARCHITECTURE.md.
"""

__version__ = "0.1.0"


class LssrError(Exception):
    """A user-facing error: the message names the file, key or value at fault and the fix."""
