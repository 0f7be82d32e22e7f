"""When the per-step probe measures (:class:`ProbeSchedule`): every step of a dense window, then every ``every``
steps, and with ``consecutive`` the step after each (for the cosine of consecutive step gradients)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProbeSchedule:
    """The steps of ``probe:`` in a run config (:class:`lssr.config.ProbeConfig`: start, stop, dense_until,
    every, consecutive)."""

    every: int = 10
    start: int = 0
    stop: int | None = None
    dense_until: int = 0
    consecutive: bool = False

    @classmethod
    def of(cls, p) -> ProbeSchedule:
        """The schedule of a :class:`lssr.config.ProbeConfig`."""
        return cls(p.every, p.start, p.stop, p.dense_until, p.consecutive)

    def scheduled(self, step: int) -> bool:
        """Every step in [start, dense_until), then start, start + every, ... before ``stop`` (exclusive)."""
        if step < self.start or (self.stop is not None and step >= self.stop):
            return False
        return step < self.dense_until or (step - self.start) % self.every == 0

    def wants(self, step: int) -> bool:
        """The scheduled steps, and with ``consecutive`` the step after each (its batch gradient only)."""
        return self.scheduled(step) or (self.consecutive and step > 0 and self.scheduled(step - 1))
