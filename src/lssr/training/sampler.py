"""Mini-batch sampling for SGD: B_t ⊂ {0, …, n−1}, |B_t| = b, with or without replacement."""

from __future__ import annotations

import torch


def steps_per_epoch(n: int, b: int) -> int:
    """n // b steps make an epoch (at least one)."""
    return max(n // b, 1)


class BatchSampler:
    """Mini-batch indices for SGD: without replacement (epoch permutations) or with replacement.

    The sampler owns its ``torch.Generator`` seeded with the run's seed, so drawing batches never touches
    the global RNG (which seeds the initialisation and is free for probes).
    """

    def __init__(self, n: int, b: int, replacement: bool, seed: int):
        self.n, self.b, self.replacement = n, b, replacement
        self.generator = torch.Generator().manual_seed(seed)
        self.steps_per_epoch = steps_per_epoch(n, b)
        self._perm: torch.Tensor | None = None
        self._pos = 0

    def next(self) -> torch.Tensor:
        if self.replacement:
            return torch.randint(self.n, (self.b,), generator=self.generator)
        if self.b == self.n:
            return torch.arange(self.n)  # GD: the order of the full batch does not matter
        if self._perm is None or self._pos + self.b > self.n:
            self._perm = torch.randperm(self.n, generator=self.generator)
            self._pos = 0
        idx = self._perm[self._pos : self._pos + self.b]
        self._pos += self.b
        return idx

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "perm": self._perm, "pos": self._pos}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self._perm, self._pos = state["perm"], state["pos"]
