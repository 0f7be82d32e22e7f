"""``lssr.SharpnessCallback``: :class:`.monitor.SharpnessMonitor` inside ``lightning.pytorch.Trainer.fit``.

Needs the optional ``lightning`` package (``pip install "lssr-eos[lightning]"``); the rest of lssr never
imports it. The monitor measures in ``on_before_optimizer_step``: in Lightning 2.x the precision plugin runs
the optimiser's closure (``training_step`` and ``backward``) and then this hook, before ``optimizer.step()`` and
before gradient clipping, so the parameters' ``.grad`` hold the step's mini-batch gradient g_t and the monitor's
auto choice is its streaming mode. With ``accumulate_grad_batches`` = k the hook comes once per optimiser step,
after the k-th micro-batch's ``backward``, each micro-batch's loss divided by k: ``.grad`` is the gradient of the
effective batch of k micro-batches, one g_t at b = k × the loader's batch size (the callback passes
``accumulate=k``). It logs each row's numbers through every logger of the trainer at ``trainer.global_step``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from ..errors import LssrError
from .monitor import SharpnessMonitor

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # pragma: no cover - exercised by the test that hides lightning
    raise LssrError(
        "lssr.SharpnessCallback needs PyTorch Lightning; fix: pip install lightning (or lssr-eos[lightning]), "
        "or use lssr.SharpnessMonitor in a plain training loop"
    ) from None


class SharpnessCallback(Callback):
    """A Lightning callback that runs a :class:`SharpnessMonitor` on the LightningModule during ``fit``.

    loss: as for :func:`lssr.diagnose` (the module's outputs ``pl_module(x)`` against the targets; pass
        ``forward=`` for other batches). data: the probe set's source; default the trainer's training
        dataloader (its data set: a seeded draw of ``n`` samples, ``transform=`` for no augmentation).
    prefix: put before every logged name (default ``sharpness/``); it also names the callback's state in
        checkpoints (:attr:`state_key`), so two callbacks in one Trainer need two prefixes. Every other keyword goes to
        :class:`SharpnessMonitor` (n, seed, every, budget, batch_sizes, csv, callback, lr, momentum, bn,
        dropout, estimator, eigen, compute, stream and the streaming options). The optimiser is the trainer's
        first; ``accumulate`` is the trainer's ``accumulate_grad_batches``. The monitor is called after
        ``backward``, so its default (``stream=None``) is the streaming mode; ``stream=False`` gives rows of
        :func:`lssr.diagnose` on the probe set.
    The monitor's state is part of Lightning checkpoints (``state_dict`` / ``load_state_dict``). Under
    data-parallel strategies only global rank 0 measures (on its own process; the others wait for it at the
    next collective).
    """

    def __init__(self, loss: Any, data: Any = None, *, prefix: str = "sharpness/", **monitor_kwargs: Any):
        super().__init__()
        self.loss, self.data, self.prefix = loss, data, prefix
        self.kwargs = monitor_kwargs
        self.monitor: SharpnessMonitor | None = None
        self._pending_state: dict | None = None

    @property
    def state_key(self) -> str:
        """The key of this callback's state in Lightning checkpoints: the class name and the prefix, so that
        callbacks with different prefixes in one Trainer keep their own states."""
        return self._generate_state_key(prefix=self.prefix)

    def on_train_start(self, trainer, pl_module) -> None:
        data = self.data if self.data is not None else trainer.train_dataloader
        if data is None:
            raise LssrError("SharpnessCallback: no data; fix: SharpnessCallback(loss, data=...) or a train dataloader")
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        kwargs = {"accumulate": int(trainer.accumulate_grad_batches)} | self.kwargs
        self.monitor = SharpnessMonitor(pl_module, self.loss, data, optimizer, **kwargs)
        if self._pending_state is not None:
            self.monitor.load_state_dict(self._pending_state)
            self._pending_state = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.monitor is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        row = self.monitor.step(trainer.global_step)
        if row is None:
            return
        metrics = {
            f"{self.prefix}{k}": float(v)
            for k, v in row.items()
            if isinstance(v, numbers.Real) and not isinstance(v, bool) and k != "step" and not math.isnan(float(v))
        }
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.monitor is not None:
            self.monitor.close()

    def state_dict(self) -> dict:
        return self.monitor.state_dict() if self.monitor is not None else dict(self._pending_state or {})

    def load_state_dict(self, state_dict: dict) -> None:
        if not state_dict:
            return
        if self.monitor is not None:
            self.monitor.load_state_dict(state_dict)
        else:
            self._pending_state = dict(state_dict)
