"""Flat parameter vectors (:class:`ParamSpace`) and :class:`LossOperator`: L, ∇L, H·v and per-sample
gradients g_i of one model, loss and training set, accumulated over memory chunks and divided by n once.

H·v comes in four modes (``hvp_mode``): ``forward`` (forward-over-reverse, the default), ``reverse``
(reverse-over-reverse), ``graph`` (reverse-over-reverse through the first-order graph of ∇L, built once at θ and
kept in memory: each H·v is then one backward pass through it; used when the graph fits ``graph_budget``
bytes) and ``fd``, the central difference (∇L(θ + εv) − ∇L(θ − εv))/(2ε) of two full gradients, for models
with an operation that has no second derivative in PyTorch."""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import nn
from torch.func import grad, vjp
from torch.utils._pytree import tree_leaves, tree_map

from ..errors import LssrError
from .functions import (
    Params,
    check_functional_mode,
    hvp_fn,
    hvp_many_fn,
    hvp_rev_fn,
    loss_sum_fn,
    model_outputs,
    per_sample_grads_fn,
    per_sample_jvp_fn,
    per_sample_loss_of,
    per_sample_losses_fn,
    split_state,
)

Tensor = torch.Tensor

HVP_MODES = ("forward", "reverse", "graph", "fd")
#: Default memory of one chunk of per-sample gradients (chunk × m numbers): on the CPU small chunks are
#: fastest for large models (resnet18, m = 11.2M: a pass at chunk 1 took ~15 gradients' time, at 32 ~30-46);
#: a GPU needs larger chunks to be busy. The chunk is at most 64 samples and at most ``chunk_size``.
PER_SAMPLE_CHUNK_BYTES = {"cpu": 64 << 20, "other": 1 << 30}


class ParamSpace:
    """Maps a parameter dict to flat vectors of length m and back (also batched: (k, m))."""

    def __init__(self, params: Params):
        self.names = list(params)
        self.shapes = [params[k].shape for k in self.names]
        self.numels = [params[k].numel() for k in self.names]
        self.dim = int(sum(self.numels))
        first = next(iter(params.values()))
        self.dtype, self.device = first.dtype, first.device

    def flatten(self, d: Params, out: Tensor | None = None) -> Tensor:
        """(m,) from a parameter dict, written into ``out`` when given."""
        if out is None:
            return torch.cat([d[k].reshape(-1) for k in self.names])
        return self.flatten_batched({k: t.unsqueeze(0) for k, t in d.items()}, out=out.unsqueeze(0))[0]

    def flatten_batched(self, d: Params, out: Tensor | None = None) -> Tensor:
        """(k, m) from a dict of (k, *shape) tensors, written into ``out`` when given."""
        k = d[self.names[0]].shape[0]
        if out is None:
            out = torch.empty(k, self.dim, dtype=d[self.names[0]].dtype, device=d[self.names[0]].device)
        start = 0
        for name, numel, shape in zip(self.names, self.numels, self.shapes):
            out[:, start : start + numel].view(k, *shape).copy_(d[name])  # no intermediate copy of a strided source
            start += numel
        return out

    def unflatten(self, v: Tensor, copy: bool = False) -> Params:
        """The parameter dict of a flat vector (or of a batch (k, m)): views of ``v``, or with ``copy`` tensors
        that own their storage. Forward-mode AD (``make_dual``) copies the whole base storage of a view, so
        primals and tangents of a ``jvp`` are passed as owned copies: one copy of v instead of one per tensor."""
        lead = v.shape[:-1]
        parts = v.split(self.numels, dim=-1)
        out = {k: p.reshape(*lead, *s) for k, p, s in zip(self.names, parts, self.shapes)}
        return {k: t.clone() for k, t in out.items()} if copy else out

    def zeros(self, *lead: int) -> Tensor:
        return torch.zeros(*lead, self.dim, dtype=self.dtype, device=self.device)


class LossOperator:
    """The training loss L, its gradient, its Hessian H and per-sample gradients at θ, on flat vectors.

    Counts what it evaluates (``counts``: full-data gradients, HVPs, loss passes, per-sample passes,
    per-sample JVP directions, builds of the kept graph of ∇L), in units of full passes over the n samples.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable,
        inputs,
        targets: Tensor | None,
        *,
        chunk_size: int = 512,
        per_sample_chunk: int | None = None,
        params: Tensor | None = None,
        vmap_budget: int = 1024,
        where: str = "lssr.curvature",
        stream: bool = False,
        hvp_mode: str = "forward",
        dtype: torch.dtype | None = None,
        graph_budget: int | None = None,
        batch_stats: bool = False,
    ):
        """``inputs``: a tensor (``targets`` alongside) or, for a :class:`~.functions.ForwardAdapter` model, the
        whole batch (any nest of tensors with a leading sample dimension; ``targets`` None). ``stream``: the
        data stays where it is (e.g. host memory) and each chunk is moved to the parameters' device when used;
        otherwise it is moved there once. ``dtype``: compute in this dtype (parameters and floating buffers cast),
        default the parameters' own. ``batch_stats``: batch norm in train mode is allowed, each chunk of
        ``chunk_size`` samples normalised with its own statistics (L is then the mean over the chunks of each
        chunk's loss; H·v takes one tangent at a time so that the chunks stay whole); the caller keeps the
        running statistics from updating (``track_running_stats`` off)."""
        self.batch_stats = bool(batch_stats)
        if not self.batch_stats:
            check_functional_mode(model, where)
        self.model = model
        self.loss_fn = loss_fn
        self.per_sample = per_sample_loss_of(loss_fn)
        p, self.buffers = split_state(model)
        if not p:
            raise LssrError(f"{where}: the model has no trainable parameters")
        if dtype is not None:
            p = {k: v.to(dtype) for k, v in p.items()}
            self.buffers = {k: v.to(dtype) if v.is_floating_point() else v for k, v in self.buffers.items()}
        self.space = ParamSpace(p)
        self.dtype, self.device = self.space.dtype, self.space.device
        self.theta = self.space.flatten(p) if params is None else params.to(self.device, self.dtype)
        self.params = self.space.unflatten(self.theta, copy=True)
        self.stream = bool(stream)
        self.x = inputs if self.stream else self._to_device(inputs)
        self.y = targets if (self.stream or targets is None) else targets.to(self.device)
        leaves = [t for t in tree_leaves(self.x) if isinstance(t, Tensor)]
        self.n = int(leaves[0].shape[0]) if leaves else 0
        if (
            self.n < 1
            or any(t.shape[0] != self.n for t in leaves)
            or (self.y is not None and self.y.shape[0] != self.n)
        ):
            ny = "none" if self.y is None else self.y.shape[0]
            raise LssrError(f"{where}: need n >= 1 inputs and as many targets, got {self.n} and {ny}")
        self.chunk_size = int(chunk_size)
        self.per_sample_chunk = int(per_sample_chunk or self._default_per_sample_chunk())
        self.vmap_budget = max(int(vmap_budget), 1)  # samples × tangents per vmapped call (bounds memory)
        self.default_hvp_batch = 8 if self.device.type == "cuda" else 1
        self.fd_step = float(torch.finfo(self.dtype).eps) ** (1 / 3)  # ε‖v‖/max(1, ‖θ‖) of the central difference
        self._losses = per_sample_losses_fn(model, self.per_sample)
        self._grad = grad(loss_sum_fn(model, self.per_sample))
        self._graph = None
        self.counts = {"grad": 0, "hvp": 0, "loss": 0, "per_sample_pass": 0, "jvp": 0, "graph": 0}
        self.set_hvp_mode(hvp_mode, where, graph_budget=graph_budget)
        self._hvp_many = hvp_many_fn(model, self.per_sample)
        self._psg = per_sample_grads_fn(model, self.per_sample)
        self.per_sample_mode = "vmap"  # or "loop" (see _per_sample_chunk)
        self._psjvp = per_sample_jvp_fn(model, self.per_sample)

    @property
    def row_bytes(self) -> int:
        """Bytes of one vector in R^m (one per-sample gradient) in the compute dtype."""
        return self.space.dim * torch.finfo(self.dtype).bits // 8

    def _default_per_sample_chunk(self) -> int:
        budget = PER_SAMPLE_CHUNK_BYTES["cpu" if self.device.type == "cpu" else "other"]
        return max(1, min(self.chunk_size, 64, budget // max(self.row_bytes, 1)))

    def set_hvp_mode(self, mode: str, where: str = "lssr.curvature", graph_budget: int | None = None) -> None:
        """H·v by ``forward`` (forward-over-reverse), ``reverse`` (reverse-over-reverse), ``graph`` or ``fd``.

        ``graph`` builds the first-order graph of ∇L over all chunks now, counting the bytes of the tensors it
        saves, and raises :class:`GraphTooLarge` (leaving the mode unchanged) when they exceed ``graph_budget``
        (required for ``graph``)."""
        if mode not in HVP_MODES:
            raise LssrError(f"{where}: unknown hvp_mode {mode!r}; known: {', '.join(HVP_MODES)}")
        self._graph = None
        if mode == "graph":
            if graph_budget is None:
                raise LssrError(f"{where}: hvp_mode 'graph' needs a memory budget (graph_budget, bytes)")
            self._graph = _FirstOrderGraph(self, int(graph_budget))
        self.hvp_mode = mode
        self._hvp = (hvp_rev_fn if mode == "reverse" else hvp_fn)(self.model, self.per_sample)

    # -- helpers -----------------------------------------------------------------------------
    def at(self, theta: Tensor) -> "LossOperator":
        """The same operator at other parameters θ' (a flat vector); shares data and counters."""
        other = object.__new__(LossOperator)
        other.__dict__.update(self.__dict__)
        other.theta = theta.to(self.device, self.dtype)
        other.params = self.space.unflatten(other.theta, copy=True)
        if other._graph is not None:  # the kept graph belongs to θ: rebuild it at θ' (same budget)
            other._graph = _FirstOrderGraph(other, self._graph.budget)
        return other

    def _to_device(self, tree):
        """A chunk (or the whole data) on the parameters' device; floating tensors in the compute dtype."""

        def move(t):
            if not isinstance(t, Tensor):
                return t
            t = t.to(self.device)
            return t.to(self.dtype) if t.is_floating_point() else t

        return tree_map(move, tree)

    def take(self, sl: slice) -> tuple[object, Tensor | None]:
        """The samples ``sl`` as (inputs, targets) on the device."""
        x = self._to_device(tree_map(lambda t: t[sl] if isinstance(t, Tensor) else t, self.x))
        y = None if self.y is None else self.y[sl].to(self.device)
        return x, y

    def chunks(self, size: int | None = None) -> Iterator[tuple[object, Tensor | None]]:
        size = size or self.chunk_size
        for s in range(0, self.n, size):
            yield self.take(slice(s, s + size))

    def _vmap_chunk(self, k: int) -> int:
        """Data chunk for a call vmapped over k tangents: at most ``vmap_budget`` samples × tangents."""
        return max(1, min(self.chunk_size, self.vmap_budget // max(k, 1)))

    # -- full-data quantities ---------------------------------------------------------------
    @torch.no_grad()
    def losses(self) -> Tensor:
        """(ℓ_i)_i, length n."""
        self.counts["loss"] += 1
        return torch.cat([self._losses(self.params, self.buffers, x, y) for x, y in self.chunks()])

    def loss(self) -> float:
        """L(θ) = (1/n) Σ ℓ_i."""
        return float(self.losses().sum()) / self.n

    def gradient(self) -> Tensor:
        """∇L (flat)."""
        self.counts["grad"] += 1
        return self._gradient_at(self.params)

    def _gradient_at(self, params: Params) -> Tensor:
        total = self.space.zeros()
        for x, y in self.chunks():
            total += self.space.flatten(self._grad(params, self.buffers, x, y))
        return total / self.n

    def weighted_gradients(self, W: Tensor) -> Tensor:
        """(k, m) rows Σ_i W_ji ∇ℓ_i for the rows of W (k, n): one forward pass per chunk and one backward pass
        per row (counted as k gradients), no per-sample gradients."""
        W = W.to(self.device, self.dtype)
        out = self._empty_rows(W.shape[0])
        for s in range(0, self.n, self.chunk_size):
            sl = slice(s, min(s + self.chunk_size, self.n))
            x, y = self.take(sl)
            _, pullback = vjp(lambda p: self._losses(p, self.buffers, x, y), self.params)
            for j in range(W.shape[0]):
                g = pullback(W[j, sl])[0]
                if s == 0:
                    self.space.flatten(g, out=out[j])
                else:
                    out[j] += self.space.flatten(g)
        self.counts["grad"] += W.shape[0]
        return out

    def fd_epsilon(self, v: Tensor) -> float:
        """ε of the central difference along v: ``fd_step``·max(1, ‖θ‖)/‖v‖."""
        return self.fd_step * max(1.0, float(self.theta.norm())) / max(float(v.norm()), 1e-300)

    def hvp_fd(self, v: Tensor, eps: float | None = None) -> Tensor:
        """(∇L(θ + εv) − ∇L(θ − εv))/(2ε): H v up to O(ε²) and rounding (two full gradients)."""
        v = v.to(self.device, self.dtype)
        eps = self.fd_epsilon(v) if eps is None else eps
        plus = self._gradient_at(self.space.unflatten(self.theta + eps * v))
        minus = self._gradient_at(self.space.unflatten(self.theta - eps * v))
        return (plus - minus) / (2 * eps)

    def hvp(self, v: Tensor, return_grad: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """H v (flat); with ``return_grad`` also ∇L, the primal output of the same pass."""
        self.counts["hvp"] += 1
        if self.hvp_mode == "fd":
            h = self.hvp_fd(v)
            return (h, self._gradient_at(self.params)) if return_grad else h
        if self._graph is not None:
            h = self._graph.hvp(v.to(self.device, self.dtype)).div_(self.n)
            return (h, self._graph.grad / self.n) if return_grad else h
        vt = self.space.unflatten(v.to(self.device, self.dtype), copy=True)
        g_tot = h_tot = None
        for x, y in self.chunks():
            g, h = self._hvp(self.params, self.buffers, x, y, vt)
            h_tot = self.space.flatten(h) if h_tot is None else h_tot.add_(self.space.flatten(h))
            if return_grad:
                g_tot = self.space.flatten(g) if g_tot is None else g_tot.add_(self.space.flatten(g))
        if return_grad:
            return h_tot.div_(self.n), g_tot.div_(self.n)
        return h_tot.div_(self.n)

    def hvp_many(self, V: Tensor, batch: int | None = None) -> Tensor:
        """H V for k vectors (rows of V, shape (k, m)), ``batch`` tangents per vmap call (data chunks shrink
        so that samples × tangents ≤ ``vmap_budget``); ``batch`` 1 loops over single HVPs. The default
        (``default_hvp_batch``) is 8 on CUDA and 1 on the CPU, where vmapped tangents are no faster per HVP
        than single ones on cnn6."""
        k = V.shape[0]
        if k == 0:
            return V.clone()
        batch = 1 if self.batch_stats else batch or self.default_hvp_batch
        if batch <= 1 or self.hvp_mode != "forward":
            out = V.new_empty(k, self.space.dim, device=self.device, dtype=self.dtype)
            for i, v in enumerate(V):
                out[i] = self.hvp(v)
            return out
        out = []
        for s in range(0, k, batch):
            Vb = V[s : s + batch].to(self.device, self.dtype)
            self.counts["hvp"] += Vb.shape[0]
            vt = self.space.unflatten(Vb, copy=True)
            tot = self.space.zeros(Vb.shape[0])
            for x, y in self.chunks(self._vmap_chunk(Vb.shape[0])):
                tot += self.space.flatten_batched(self._hvp_many(self.params, self.buffers, x, y, vt))
            out.append(tot / self.n)
        return torch.cat(out)

    def hvp_double_backward(self, v: Tensor) -> Tensor:
        """H v by double backward (``autograd.grad`` with ``create_graph=True`` twice); for comparison."""
        self.counts["hvp"] += 1
        vt = self.space.unflatten(v.to(self.device, self.dtype))
        total = self.space.zeros()
        with torch.enable_grad():
            for x, y in self.chunks():
                p = {k: t.detach().requires_grad_(True) for k, t in self.params.items()}
                loss = self.per_sample(*model_outputs(self.model, p, self.buffers, x, y)).sum()
                gs = torch.autograd.grad(loss, list(p.values()), create_graph=True)
                dot = sum((g * vt[k]).sum() for g, k in zip(gs, p))
                hs = torch.autograd.grad(dot, list(p.values()))
                total += torch.cat([h.reshape(-1) for h in hs])
        return total / self.n

    # -- per-sample quantities --------------------------------------------------------------
    def per_sample_grads(
        self, chunk: int | None = None, out: Tensor | Callable[[slice], Tensor] | None = None, reuse: bool = False
    ) -> Iterator[tuple[slice, Tensor]]:
        """Yield (slice of sample indices, G_c) with G_c of shape (chunk, m): the rows are g_iᵀ.

        Where G_c is written: ``out`` an (n, m) matrix: its rows ``out[slice]`` (yielded as that view); ``out``
        a callable: the (len(slice), m) view it returns for the slice; ``reuse``: one scratch block, overwritten
        by the next chunk (for a caller that reduces each chunk before asking for the next); else new memory.
        Writing into memory already touched matters on the CPU: each new row of a large model is a fresh
        allocation whose pages are faulted in again (about as costly as the row's backward pass)."""
        chunk = chunk or self.per_sample_chunk
        self.counts["per_sample_pass"] += 1
        scratch = self._empty_rows(min(chunk, self.n)) if reuse and out is None else None
        for s in range(0, self.n, chunk):
            sl = slice(s, min(s + chunk, self.n))
            if scratch is not None:
                dest = scratch[: sl.stop - sl.start]
            else:
                dest = None if out is None else (out(sl) if callable(out) else out[sl])
            yield sl, self._per_sample_chunk(*self.take(sl), dest).detach()

    def _per_sample_chunk(self, x, y, out: Tensor | None = None) -> Tensor:
        """(chunk, m) per-sample gradients: vmapped, or, for a model that ``vmap`` cannot batch (``.item()``
        or data-dependent control flow in its forward pass), one gradient per sample (``per_sample_mode``
        becomes ``loop`` for the rest of the operator's life)."""
        k = int(next(t for t in tree_leaves(x) if isinstance(t, Tensor)).shape[0])
        if self.per_sample_mode == "vmap" and k > 1:  # one sample: its gradient, without vmap's batching rules
            try:
                return self.space.flatten_batched(self._psg(self.params, self.buffers, x, y), out=out)
            except torch.OutOfMemoryError:
                raise
            except (RuntimeError, NotImplementedError):
                self.per_sample_mode = "loop"
        out = self._empty_rows(k) if out is None else out
        for i in range(k):
            xi = tree_map(lambda t: t[i : i + 1] if isinstance(t, Tensor) else t, x)
            yi = None if y is None else y[i : i + 1]
            self.space.flatten(self._grad(self.params, self.buffers, xi, yi), out=out[i])
        return out

    def _empty_rows(self, k: int) -> Tensor:
        return torch.empty(k, self.space.dim, dtype=self.dtype, device=self.device)

    def per_sample_jvp(self, U: Tensor) -> Tensor:
        """(n, k) matrix of g_iᵀu_j for the rows u_j of U (k, m): forward mode, no per-sample gradients."""
        Ut = self.space.unflatten(U.to(self.device, self.dtype), copy=True)
        size = self._vmap_chunk(U.shape[0])
        out = torch.cat([self._psjvp(self.params, self.buffers, x, y, Ut).T for x, y in self.chunks(size)])
        self.counts["jvp"] += U.shape[0]
        return out


class GraphTooLarge(LssrError):
    """The first-order graph of ∇L needs more memory than the budget given for ``hvp_mode='graph'``."""


class _FirstOrderGraph:
    """Σ_i ∇ℓ_i(θ) over all chunks with its autograd graph kept (``create_graph``), so that H·v = the
    vector-Jacobian product of that gradient with v, one backward pass each (divided by n by the caller).
    Building it counts the bytes of every tensor the graphs save (shared storage once) and gives up with
    :class:`GraphTooLarge` past ``budget``."""

    def __init__(self, op: "LossOperator", budget: int):
        self.budget = budget
        self.space = op.space
        seen: set = set()
        used = [0]
        too_large = GraphTooLarge(
            f"hvp_mode 'graph': the graph of ∇L needs more than {budget / 2**20:.0f} MiB; "
            "use hvp_mode 'forward' or 'reverse'"
        )

        def pack(t: Tensor) -> Tensor:
            st = t.untyped_storage()
            key = (st.data_ptr(), st.nbytes())
            if key not in seen:
                seen.add(key)
                used[0] += st.nbytes()
                if used[0] > budget:
                    raise too_large
            # detached: the saved value must not hold the tensor's own grad_fn (an output saved by the node that made
            # it would form a cycle node -> saved value -> tensor -> node, which nothing frees); unpacking re-attaches
            # the autograd metadata, so the double backward of the HVPs is the same
            return t.detach()

        op.counts["graph"] += 1
        self.leaves = {k: t.detach().requires_grad_(True) for k, t in op.params.items()}
        grads = None
        try:
            with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                for x, y in op.chunks():
                    loss = op.per_sample(*model_outputs(op.model, self.leaves, op.buffers, x, y)).sum()
                    gs = torch.autograd.grad(loss, list(self.leaves.values()), create_graph=True)
                    grads = list(gs) if grads is None else [a + b for a, b in zip(grads, gs)]
        except GraphTooLarge:
            raise
        except RuntimeError:  # a hook's exception raised during backward comes back wrapped in a RuntimeError
            if used[0] > budget:
                raise too_large from None
            raise
        self.grads = grads
        self.bytes = used[0]
        self.grad = torch.cat([g.detach().reshape(-1) for g in grads])  # Σ_i g_i

    def hvp(self, v: Tensor) -> Tensor:
        """Σ_i ∇²ℓ_i v (flat)."""
        vt = self.space.unflatten(v)
        hs = torch.autograd.grad(
            self.grads, list(self.leaves.values()), grad_outputs=[vt[k] for k in self.leaves], retain_graph=True
        )
        return torch.cat([h.reshape(-1) for h in hs])
