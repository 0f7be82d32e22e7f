"""The stacked model of a batched group: every parameter and buffer with a leading member axis
(``torch.func.stack_module_state`` layout), one forward pass ``vmap`` over ``functional_call``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call, vmap

from ..config import RunConfig
from ..io import CsvLog
from .core import METRIC_COLUMNS
from .sampler import BatchSampler


@dataclass
class Member:
    """One run of a batched group: its config, output folder, rows so far and how it stopped.

    With an output folder, its ``metrics.csv`` rows go to ``metrics.csv.partial`` there as they are made
    (:class:`~lssr.io.CsvLog`), and a group checkpoint keeps only the file's byte offset; without one, they
    stay in ``rows``."""

    index: int  # position in the caller's list
    cfg: RunConfig
    out_dir: Path | None
    sampler: BatchSampler | None  # own sampler when seeds differ, else None (the shared one is used)
    rows: list = field(default_factory=list)  # the rows, where there is no output folder (no log)
    open_row: dict | None = None  # the row of the current step, waiting for its batch loss
    status: str = "completed"
    stopped_by: str = "budget"
    steps: int = 0
    done: bool = False
    wall: float = 0.0  # seconds from the group's start to this member's stop (across restarts)
    final_state: dict | None = None  # its weights when it stopped (kept for the group checkpoint)
    log: CsvLog | None = None  # its metrics.csv.partial, where it has an output folder
    metrics_offset: int | None = None  # bytes of the log when the member stopped (all of its rows)

    def __post_init__(self):
        if self.out_dir is not None:
            self.log = CsvLog(self.out_dir / "metrics.csv", METRIC_COLUMNS)

    def add_row(self, row: dict) -> None:
        """Record one finished row of ``metrics.csv``."""
        if self.log is None:
            self.rows.append(row)
        else:
            self.log.append(row)

    def flush_rows(self) -> int | None:
        """Flush the log to the OS; its length in bytes (None without a log). A training member's log is not
        fsynced (one fsync per member at every group checkpoint would cost more than the steps between
        them); a stopped member's is flushed, fsynced and closed once, when it stops."""
        if self.log is None:
            return None
        if self.metrics_offset is None:
            offset = self.log.flush(sync=self.done)
            if not self.done:
                return offset
            self.metrics_offset = offset
            self.log.close()
        return self.metrics_offset

    def state_dict(self) -> dict:
        """What a group checkpoint keeps of this member (``weights_only``-loadable: tensors, lists, numbers):
        the byte offset of its row log, not the rows, so the checkpoint's size does not grow with the steps."""
        state = {k: getattr(self, k) for k in ("status", "stopped_by", "steps", "done", "wall")}
        state["metrics_offset"] = self.flush_rows()
        state["final_state"] = None if self.final_state is None else {k: v.cpu() for k, v in self.final_state.items()}
        state["sampler"] = None if self.sampler is None else self.sampler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Take ``state`` (from :meth:`state_dict`) and cut the row log back to its offset (rows written after
        that checkpoint, before the process ended, are dropped; the resumed group writes them again)."""
        for k in ("status", "stopped_by", "steps", "done", "wall", "final_state"):
            setattr(self, k, state[k])
        self.open_row = None
        self.log.truncate(state["metrics_offset"])
        self.metrics_offset = state["metrics_offset"] if self.done else None
        if self.sampler is not None:
            self.sampler.load_state_dict(state["sampler"])


class Stack:
    """The stacked parameters / buffers of the active members and the vmapped forward pass."""

    def __init__(self, template: nn.Module, models: list[nn.Module]):
        self.template = template
        self.param_names = [k for k, _ in template.named_parameters()]
        self.buffer_names = [k for k, _ in template.named_buffers()]
        self.params = {
            k: torch.stack([dict(m.named_parameters())[k].detach() for m in models]).requires_grad_(True)
            for k in self.param_names
        }
        self.buffers = {
            k: torch.stack([dict(m.named_buffers())[k].detach() for m in models]).clone() for k in self.buffer_names
        }

        def f(p: dict, b: dict, x: torch.Tensor) -> torch.Tensor:
            return functional_call(self.template, (p, b), (x,))

        self._f = f

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype of the parameters (that of the data)."""
        return next(iter(self.params.values())).dtype

    def forward(self, x: torch.Tensor, x_batched: bool) -> torch.Tensor:
        """Outputs of every member, shape (M, len(x), classes); ``x`` is (M, c, ...) when batched."""
        return vmap(self._f, in_dims=(0, 0, 0 if x_batched else None))(self.params, self.buffers, x)

    def rows_forward(self, rows: torch.Tensor):
        """The forward pass (without gradients) of the members at ``rows`` alone: x -> (len(rows), len(x), classes)."""
        params = {k: v.detach().index_select(0, rows) for k, v in self.params.items()}
        buffers = {k: v.index_select(0, rows) for k, v in self.buffers.items()}
        return lambda x: vmap(self._f, in_dims=(0, 0, None))(params, buffers, x)

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only the members at ``rows`` (a 1-D index tensor on the device)."""
        self.params = {k: v.detach().index_select(0, rows).requires_grad_(True) for k, v in self.params.items()}
        self.buffers = {k: v.index_select(0, rows) for k, v in self.buffers.items()}

    def state(self) -> dict:
        """The stacked parameters and buffers (on the CPU), for a group checkpoint."""
        return {
            "params": {k: v.detach().cpu() for k, v in self.params.items()},
            "buffers": {k: v.cpu() for k, v in self.buffers.items()},
        }

    def load_state(self, state: dict, device: torch.device) -> None:
        """Put back what :meth:`state` returned (the rows of the members still in the stack)."""
        self.params = {k: state["params"][k].to(device).requires_grad_(True) for k in self.param_names}
        self.buffers = {k: state["buffers"][k].to(device) for k in self.buffer_names}

    def state_dict(self, i: int) -> dict[str, torch.Tensor]:
        flat = {**{k: v.detach()[i] for k, v in self.params.items()}, **{k: v[i] for k, v in self.buffers.items()}}
        return {k: flat[k].clone() for k in self.template.state_dict().keys()}
