"""``lssr.LearningRateForBatchSize``: in ``lightning.pytorch.Trainer.fit``, the learning rate follows the batch size
by LSSR (:mod:`lssr.recommend`): when training starts, and at each epoch start where the training batch size
differs from the last one seen (after ``BatchSizeFinder``, or a new dataloader), every parameter group's η (and
each scheduler's base η) is multiplied by ρ_b/ρ_{b_old}, with ρ_b = 1/(1 + (γ_{N,b}/b) B_simple) and the
optimiser configured for ``b_ref``. Each change is one line through Lightning's logger (``lssr: ...``).

Needs the optional ``lightning`` package, as :class:`lssr.SharpnessCallback`.
"""

from __future__ import annotations

import math
from typing import Any

from .errors import LssrError
from .recommend import LINEAR_X, SATURATED_X, check_optimizer, lr_ratio, noise_scale, recommend, regime, regime_x

try:
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.utilities import rank_zero_info
except ImportError:  # pragma: no cover - exercised by the test that hides lightning
    raise LssrError(
        "lssr.LearningRateForBatchSize needs PyTorch Lightning; fix: pip install lightning (or lssr-eos[lightning]), "
        "or use lssr.recommend in a plain training loop"
    ) from None


def _batch_size(loader) -> int | None:
    for obj in (loader, getattr(loader, "batch_sampler", None)):
        b = getattr(obj, "batch_size", None)
        if isinstance(b, int):
            return b
    if isinstance(loader, (list, tuple)) and loader:
        return _batch_size(loader[0])
    if isinstance(loader, dict) and loader:
        return _batch_size(next(iter(loader.values())))
    return None


class LearningRateForBatchSize(Callback):
    """Sets SGD's learning rate for the training batch size b by LSSR, η(b) = η(b_ref)·ρ_b/ρ_{b_ref}.

    b_ref: the batch size the optimiser's η was configured (tuned) for. source: the B_simple measurement
        (a :class:`lssr.recommend.NoiseScale`, a :class:`lssr.Diagnostics`, or a sequence: the first is used);
        None: measured with ``loss`` on a seeded draw of ``n`` samples (all when fewer) of ``data`` (default the
        training dataloader's data set, read in order, through its own transform: pass ``data=`` for one without
        augmentation) at the model's θ when training starts (one gradient and one pass of per-sample gradients; ``bn`` /
        ``dropout`` as for :func:`lssr.diagnose`). n_train: N, the training set's size (default: the
        measurement's); replacement: batches drawn with replacement. follow: False logs the recommendation
        and leaves η alone (the opt-out). Adam-type optimisers are refused (LssrError). ``history``: one dict per
        change (step, b, the ratio, the first group's η before and after, regime, B_simple).
    """

    def __init__(
        self,
        b_ref: int,
        source: Any = None,
        *,
        loss: Any = None,
        data: Any = None,
        n: int | None = 512,
        seed: int = 0,
        bn: str = "refuse",
        dropout: str = "refuse",
        n_train: int | None = None,
        replacement: bool = False,
        follow: bool = True,
    ):
        super().__init__()
        if source is None and loss is None:
            raise LssrError("LearningRateForBatchSize: give source= (a B_simple measurement) or loss= to measure one")
        self.b_ref, self.source, self.loss, self.data = int(b_ref), source, loss, data
        self.n, self.seed, self.bn, self.dropout = n, seed, bn, dropout
        self.n_train, self.replacement, self.follow = n_train, bool(replacement), bool(follow)
        self.b_simple: float | None = None
        self.N: int | None = None
        self.b_now = self.b_ref  # the batch size the optimiser's η is set for
        self.b_seen = self.b_ref  # the last training batch size seen
        self.history: list[dict] = []

    def _measure(self, trainer, pl_module) -> None:
        source = self.source
        if source is None:
            data = self.data if self.data is not None else trainer.train_dataloader
            data = getattr(data, "dataset", data) if hasattr(getattr(data, "dataset", None), "__len__") else data
            n = self.n if self.n is None or not hasattr(data, "__len__") else min(self.n, len(data))
            source = noise_scale(pl_module, self.loss, data, n=n, seed=self.seed, bn=self.bn, dropout=self.dropout)
        rec = recommend(source, self.b_ref, 1.0, [self.b_ref], n=self.n_train, replacement=self.replacement)
        self.b_simple, self.N = rec.b_simple, rec.n

    def _apply(self, trainer, b: int) -> None:
        if b == self.b_seen:
            return
        self.b_seen = b
        if not self.replacement and self.N is not None and b > self.N:
            raise LssrError(f"LearningRateForBatchSize: batch size {b} > N = {self.N} without replacement")
        factor = lr_ratio(b, self.b_now, self.b_simple, self.N, self.replacement)
        opts = trainer.optimizers
        before = opts[0].param_groups[0]["lr"] if opts else math.nan
        if self.follow:
            for opt in opts:
                for group in opt.param_groups:
                    group["lr"] *= factor
                    if "initial_lr" in group:
                        group["initial_lr"] *= factor
            for config in trainer.lr_scheduler_configs:
                sched = config.scheduler
                if hasattr(sched, "base_lrs"):
                    sched.base_lrs = [lr * factor for lr in sched.base_lrs]
        after = before * factor
        reg = regime(float(regime_x(b, self.b_simple, self.N, self.replacement)))
        verb = "set" if self.follow else "would set (follow=False)"
        rank_zero_info(
            f"lssr: batch size {self.b_now} -> {b}: {verb} lr {before:.4g} -> {after:.4g} (x{factor:.4g}, LSSR with "
            f"B_simple = {self.b_simple:.4g}, {reg} regime: linear when γb⁻¹B_simple > {LINEAR_X:g}, saturated "
            f"< {SATURATED_X:g})"
        )
        self.history.append(
            dict(
                step=trainer.global_step,
                b_from=self.b_now,
                b=b,
                factor=factor,
                lr_before=before,
                lr_after=after,
                regime=reg,
                b_simple=self.b_simple,
                followed=self.follow,
            )  # fmt: skip
        )
        if self.follow:
            self.b_now = b

    def _check(self, trainer) -> int | None:
        for opt in trainer.optimizers:
            check_optimizer(opt)
        return _batch_size(trainer.train_dataloader)

    def on_train_start(self, trainer, pl_module) -> None:
        b = self._check(trainer)
        if b is None:
            raise LssrError(
                "LearningRateForBatchSize: cannot read the training batch size from the train dataloader; fix: a "
                "torch DataLoader with batch_size set"
            )
        if self.b_simple is None:
            self._measure(trainer, pl_module)
        self._apply(trainer, b)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        b = _batch_size(trainer.train_dataloader)
        if b is not None and self.b_simple is not None:
            self._apply(trainer, b)

    def state_dict(self) -> dict:
        return {"b_now": self.b_now, "b_seen": self.b_seen, "b_simple": self.b_simple, "N": self.N}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict:
            self.b_now, self.b_seen = state_dict["b_now"], state_dict["b_seen"]
            self.b_simple, self.N = state_dict["b_simple"], state_dict["N"]
