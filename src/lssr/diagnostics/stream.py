"""The monitor's streaming estimates: tr S_b, tr S_n, tr S_1, B_simple, ρ_b, tr(H S_b), ‖H‖_{S_b} and ‖H‖
from the mini-batch gradients g_t that training computes anyway, and two Hessian-vector products per row
(``SharpnessMonitor``'s rows when its ``step()`` comes after ``backward()``, or with ``stream=True``).

A window is K consecutive training steps t with mini-batch gradients g_t (batch size b), dealt round-robin
into M groups (group i: k_i steps, sum A_i = Σ_{t∈i} g_t, Σ_{t∈i} ‖g_t‖², and the sign sketch
Z_i = Σ_{t∈i} z_t g_t with z_t = ±1 from the monitor's own generator). Treating the g_t of a window as
independent draws at one θ (batches drawn with replacement, or from a training set of N ≫ b·B_simple samples):

- tr S_b = E‖g_b‖²: the mean of ‖g_t‖² (the window's mean of tr S_b(θ_t));
- tr S_n = ‖∇L‖²: the U-statistic Σ_{s≠t} g_sᵀg_t / (K(K − 1)) (McCandlish et al. 2018's unbiased
  combination of |G|² at batch sizes b and Kb). Its cross terms see ∇L(θ_s)ᵀ∇L(θ_t): when ∇L changes sign
  from step to step (the oscillation of the edge of stability) they cancel, and the estimate falls below the
  window's mean of ‖∇L(θ_t)‖², down to the square of its mean gradient;
- by identity (1), S_b − S_n = (γ_{N,b}/b)(S_1 − S_n): tr S_1 = tr S_n + (b/γ)(tr S_b − tr S_n),
  B_simple = (tr S_1 − tr S_n)/tr S_n, ρ_b = tr S_n/tr S_b;
- tr(H S_b) = E[g_bᵀ H g_b]: vᵀH_Pv with v = ḡ + U/√K, U the centred sign sketch and H_P the Hessian of
  fresh probe samples, independent of the g_t (:func:`row_products`): unbiased for the window's mean of
  g_tᵀHg_t whatever the drift of θ;
- ‖H‖: the top Ritz value of H_P in span{x, v}, x a warm start that one damped power step per row moves towards
  the top eigenvector: it settles on ‖H‖ at a fixed θ but lags while θ moves, a lower estimate during training
  (``benchmarks/study_eig_trackers.py``: 0.68 ± 0.17 of ‖H‖ on a run at the edge of stability). With an
  :class:`.options.Eigen` (``eigen``), up to ``max_hvps`` LOBPCG products per row from x: the top eigenvalue of
  H_P, which lies above ‖H‖ on average by more the fewer the probe samples (λ_max is convex).

The training's g_t and the HVPs are gradients of one loss. With batch norm in train mode, g_t is the gradient
of ℓ(θ; B_t), the batch B_t normalised with its own statistics: the loss SGD descends is L_b(θ) = E_B ℓ(θ; B) over
batches of b, and every quantity above is of L_b (S_b = E[g_B g_Bᵀ], H = ∇²L_b; ``lssr.diagnose(...,
bn="batch")`` measures the same on a fixed sample). The probe samples of a row are then drawn in batches of b
(``stream_n`` rounded up to a multiple of b), each batch normalised with its own statistics, the running
statistics not updated; tr S_1 and B_simple are those identity (1) gives from batches of b (a per-sample
S_1 does not exist with batch statistics; B_simple is McCandlish et al.'s noise scale measured at b). ‖H‖ is the
top Ritz value of one probe batch's Hessian: when that Hessian is noisy (small b) it lies above ‖∇²L_b‖.

Standard errors: the delete-one-group jackknife over the M groups; for tr(H S_b), ‖H‖_{S_b} and ‖H‖ at least the
spread of consecutive rows (:func:`successive_se`), which holds the spread of the probe samples.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from ..curvature import GraphTooLarge
from ..curvature.eigen import lobpcg_top
from ..errors import LssrError
from .api import _set_hvp_mode, memory_budget
from .batches import collect
from .engine import prepare
from .guards import preserved_rng, unwrap
from .guards import restoring as _restoring
from .guards import train_mode_bn as _train_mode_bn
from .options import Eigen

Tensor = torch.Tensor

#: The weight of the new direction in the damped power step of ‖H‖'s warm start (:func:`row_products`).
EIG_STEP = 0.5
#: tr(H S_b) from the window's last HVP_STEPS gradients (near the row's θ, where the probe samples' H is).
HVP_STEPS = 8


def grads_of(params: list[nn.Parameter]) -> list[Tensor] | None:
    """The ``.grad`` of each of ``params`` (zeros for a parameter without one, e.g. unused in the step); None when
    no parameter has a gradient (the call came before ``backward``)."""
    if all(p.grad is None for p in params):
        return None
    return [p.grad.detach() if p.grad is not None else torch.zeros_like(p) for p in params]


class Window:
    """The running sums of one window of training gradients g_t (length m), in M round-robin groups: per step one
    copy of the gradients into a flat buffer (a row of the ring of the last ``recent`` gradients), a dot product
    and one in-place addition (two without ``recent``: the sign sketch Z of the whole window's tr(H S_b))."""

    def __init__(
        self, params: list[Tensor], groups: int, *, generator: torch.Generator, start: int, recent: int | None = None
    ):
        self.M = int(groups)
        self.start = int(start)
        first = params[0]
        dim = sum(p.numel() for p in params)
        like = dict(dtype=first.dtype, device=first.device)
        self.A = torch.zeros(self.M, dim, **like)  # Σ_{t∈i} g_t
        # the last `recent` gradients (a ring), for tr(H S_b) at the row's θ; None: the whole window's sign sketch
        # Z_i = Σ_{t∈i} z_t g_t instead
        self.R = None if recent is None else torch.zeros(int(recent), dim, **like)
        self.Z = torch.zeros(self.M, dim, **like) if recent is None else None
        self._g = torch.empty(dim, **like) if recent is None else self.R[0]
        self.q = [0.0] * self.M  # Σ_{t∈i} ‖g_t‖²
        self.k = [0] * self.M
        self.w = [0.0] * self.M  # Σ_{t∈i} z_t
        self.steps = 0
        self.generator = generator
        self._signs: list[float] = []

    def add(self, grads: list[Tensor]) -> None:
        """Adds one step's mini-batch gradient g_t (one tensor per parameter)."""
        i = self.steps % self.M
        if not self._signs:
            self._signs = (torch.randint(0, 2, (256,), generator=self.generator) * 2 - 1).double().tolist()
        z = self._signs.pop()
        if self.R is not None:
            self._g = self.R[self.steps % self.R.shape[0]]
        g = torch.cat([t.reshape(-1) for t in grads], out=self._g)
        self.A[i].add_(g)
        if self.Z is not None:
            self.Z[i].add_(g, alpha=z)
        self.q[i] += float(g.dot(g))
        self.k[i] += 1
        self.w[i] += z
        self.steps += 1

    def recent(self) -> Tensor | None:
        """The last min(steps, ``recent``) gradients (rows, in ring order), or None without ``recent``."""
        return None if self.R is None else self.R[: min(self.steps, self.R.shape[0])]

    @property
    def last(self) -> Tensor:
        """The last step's gradient g_t (flat)."""
        return self._g

    def ready(self) -> bool:
        """Every group has at least two steps."""
        return min(self.k) >= 2


def jackknife(values: Tensor) -> float:
    """The delete-one jackknife standard error from the M leave-one-out values (NaN for M < 2 or a NaN)."""
    M = values.numel()
    if M < 2 or not bool(torch.isfinite(values).all()):
        return math.nan
    return float(((M - 1) / M * (values - values.mean()).square().sum()).sqrt())


def window_moments(A: Tensor, q, k) -> tuple[float, float, Tensor, Tensor]:
    """(tr S_b, tr S_n) of a window and their M leave-one-group-out values, from the group sums A (M, m), the
    groups' Σ‖g_t‖² q and step counts k."""
    G = (A @ A.T).double()
    q = torch.tensor(q, dtype=torch.float64)
    k = torch.tensor(k, dtype=torch.float64)
    S2, Q, K = G.sum(), q.sum(), k.sum()
    tb = float(Q / K)
    tn = float((S2 - Q) / (K * (K - 1)))
    S2_loo = S2 - 2 * G.sum(1) + G.diagonal()
    Q_loo, K_loo = Q - q, K - k
    return tb, tn, Q_loo / K_loo, (S2_loo - Q_loo) / (K_loo * (K_loo - 1))


def _rel(se: float, x: float) -> float:
    return se / abs(x) if x != 0 else math.inf


def _div(a: float, b: float) -> float:
    """a / b, NaN for b = 0 (e.g. tr S_b of a window whose gradients all vanish)."""
    return a / b if b != 0 else math.nan


def stream_estimates(window: Window, products: dict, tn_se: float, b: int | None, gamma: float) -> dict:
    """Every streaming quantity of a row with its standard error (``<name>_se``): tr S_b (the window's mean of
    ‖g_t‖², jackknife), tr S_n (g_Pᵀg_last from :func:`row_products`, with ``tn_se`` from the spread of
    consecutive rows), ``tr_S_n_window`` (the window's U-statistic, jackknife), tr(H S_b) (jackknife), ‖H‖ (no
    standard error here), and by the delta method ρ_b = tr S_n/tr S_b, ‖H‖_{S_b} = tr(H S_b)/tr S_b and, by
    identity (1) with γ = γ_{N,b}, tr S_1 = tr S_n + (b/γ)(tr S_b − tr S_n) and B_simple = (tr S_1 − tr S_n)/tr S_n."""
    tb, tnw, tb_loo, tnw_loo = window_moments(window.A, window.q, window.k)
    tb_se, tnw_se = jackknife(tb_loo), jackknife(tnw_loo)
    tn, ths, lam = products["tr_S_n"], products["tr_HS_b"], products["top_eig"]
    ths_se = jackknife(products["tr_HS_b_loo"])
    out = {
        "tr_S_b": tb,
        "tr_S_b_se": tb_se,
        "tr_S_n": tn,
        "tr_S_n_se": tn_se,
        "tr_S_n_window": tnw,
        "tr_S_n_window_se": tnw_se,
        "tr_HS_b": ths,
        "tr_HS_b_se": ths_se,
        "top_eig": lam,
        "top_eig_se": math.nan,
        "rho_b": _div(tn, tb),
        "rho_b_se": abs(_div(tn, tb)) * math.hypot(_rel(tn_se, tn), _rel(tb_se, tb)),
        "ias_b": _div(ths, tb),
        "ias_b_se": abs(_div(ths, tb)) * math.hypot(_rel(ths_se, ths), _rel(tb_se, tb)),
    }
    if b is not None and gamma > 0:
        f = b / gamma
        out["tr_S_1"] = tn + f * (tb - tn)
        out["tr_S_1_se"] = math.hypot((f - 1) * tn_se, f * tb_se)
        out["b_simple"] = f * (tb - tn) / tn if tn != 0 else math.nan
        out["b_simple_se"] = f * abs(_div(tb, tn)) * math.hypot(_rel(tb_se, tb), _rel(tn_se, tn))
    else:
        out["tr_S_1"] = out["tr_S_1_se"] = out["b_simple"] = out["b_simple_se"] = math.nan
    return out


def successive_se(values: list[float]) -> float:
    """The standard deviation of one value from the spread of consecutive ones: √(Σ (x_r − x_{r−1})² / (2(R − 1)))
    over R ≥ 3 values (the mean squared successive difference, which a slow trend barely inflates); NaN for fewer."""
    if len(values) < 3 or not all(math.isfinite(v) for v in values):
        return math.nan
    d = [(b - a) ** 2 for a, b in zip(values, values[1:])]
    return math.sqrt(sum(d) / (2 * len(d)))


def check_stream(groups: int, window: int, stream_n: int, hvp_steps: int | None = HVP_STEPS) -> None:
    """Refuses a streaming configuration that cannot make a row: fewer than two groups, a window with fewer than
    two steps per group, no probe samples, or ``hvp_steps`` not in 2 .. window (None: the whole window)."""
    if hvp_steps is not None and (
        isinstance(hvp_steps, bool) or not isinstance(hvp_steps, int) or not 2 <= hvp_steps <= window
    ):
        raise LssrError(
            f"SharpnessMonitor: hvp_steps must be an integer in 2..window ({window}) or None, got {hvp_steps!r}"
        )
    if not isinstance(stream_n, int) or stream_n < 1:
        raise LssrError(f"SharpnessMonitor: stream_n must be a positive integer, got {stream_n!r}")
    if not isinstance(groups, int) or groups < 2:
        raise LssrError(f"SharpnessMonitor: groups must be an integer >= 2, got {groups!r}")
    if not isinstance(window, int) or window < 2 * groups:
        raise LssrError(
            f"SharpnessMonitor: window = {window!r} steps is too short for {groups} groups (each needs two steps); "
            f"fix: window >= {2 * groups}, or fewer groups"
        )


def ritz2(x: Tensor, Hx: Tensor, v: Tensor, Hv: Tensor) -> tuple[float, Tensor, Tensor]:
    """The top Ritz pair of H in span{x, v} from the images H x and H v (x unit): (θ, y, H y) with y unit; (xᵀHx,
    x, Hx) when v adds no direction."""
    vv = v - (x @ v) * x
    n = float(vv.norm())
    if not n > 1e-6 * float(v.norm()) or not math.isfinite(n):
        return float(x @ Hx), x, Hx
    vv, Hvv = vv / n, (Hv - (x @ v) * Hx) / n
    B = torch.tensor([[float(x @ Hx), float(x @ Hvv)], [float(vv @ Hx), float(vv @ Hvv)]], dtype=torch.float64)
    vals, vecs = torch.linalg.eigh(0.5 * (B + B.T))
    c0, c1 = float(vecs[0, -1]), float(vecs[1, -1])
    return float(vals[-1]), c0 * x + c1 * vv, c0 * Hx + c1 * Hvv


def _hvp_direction(window: Window) -> tuple[Tensor, Tensor, Tensor]:
    """(v, parts, k): the direction v of tr(H S_b)'s product, its shares (rows summing to v) and each share's steps.

    With the window's last L gradients (``recent``): v = Σ_t z_t g_t/√L with fresh signs z_t = ±1, so that over the
    signs E[vᵀH_Pv] = (1/L) Σ_t g_tᵀH_Pg_t exactly; one share per step. Without: v = ḡ + U/√K (ḡ the window's mean
    gradient, U = Σ_t z_t (g_t − ḡ) its centred sign sketch; E[ḡᵀH_PU] = 0 and E[UᵀH_PU] = Σ_t (g_t − ḡ)ᵀH_P(g_t −
    ḡ), so E[vᵀH_Pv] = (1/K) Σ_t g_tᵀH_Pg_t), one share per group: w_i = A_i/K + (Z_i − w_i ḡ)/√K."""
    R = window.recent()
    if R is not None:
        L = R.shape[0]
        z = (torch.randint(0, 2, (L,), generator=window.generator) * 2 - 1).to(R.dtype).to(R.device)
        parts = z.unsqueeze(1) * R / math.sqrt(L)
        return parts.sum(0), parts, torch.ones(L, dtype=torch.float64)
    K = float(window.steps)
    gbar = window.A.sum(0) / K
    w = torch.tensor(window.w, dtype=gbar.dtype, device=gbar.device).unsqueeze(1)
    parts = window.A / K + (window.Z - w * gbar) / math.sqrt(K)  # w_i, (M, m)
    return parts.sum(0), parts, torch.tensor(window.k, dtype=torch.float64)


def row_products(op, window: Window, x: Tensor | None, eigen: Eigen | None = None) -> dict:
    """The HVP part of a row, two products with the Hessian H_P of the probe samples: H_P v with v from
    :func:`_hvp_direction` and H_P x (x the unit warm start of ‖H‖; the window's mean direction at first).
    With ``eigen`` (an :class:`.options.Eigen`), ‖H‖ is instead the top Ritz value of H_P after up to
    ``eigen.max_hvps`` products of LOBPCG (Davidson variant) warm-started from x, stopped at relative residual
    ``eigen.tol``, and the next warm start is its Ritz vector (:func:`lssr.curvature.eigen.lobpcg_top`).

    Returns ``tr_HS_b`` = vᵀH_Pv, its leave-one-share-out values ``tr_HS_b_loo``, ``tr_S_n`` = g_Pᵀg_last (the
    probe samples' gradient, a by-product of the first product, against the window's last mini-batch gradient:
    both at the current θ and independent, so unbiased for ‖∇L(θ)‖²), ``top_eig`` ≈ xᵀH_Px, the next warm start
    ``x`` and the relative residual ``top_eig_residual`` = ‖H_Py − θ y‖/|θ| of the top Ritz pair (θ, y) in
    span{x, v} (:func:`ritz2`, free with the two products), the row's ‖H‖.
    E[vᵀH_Pv] is the mean of g_tᵀH_Pg_t over the steps v holds; for independent g_t at one θ its mean is
    tr(H_P S_b), and over fresh probe samples tr(H S_b). The probe samples' H is at the row's θ: with the last L
    steps (the default) the g_t are near it, with the whole window they are up to K steps old, and the top
    eigen-directions of H can turn within a window (then vᵀH_Pv falls below the window's mean of tr(H S_b)).
    Leaving share i out removes p_i = w_iᵀH_Pv (Σ_i w_i = v) and rescales by K/(K − k_i). The next warm start is
    y + EIG_STEP · H_Py/‖H_Py‖, normalised: a damped power step (Oja's iteration) that averages over the rows'
    fresh probe samples, so that it follows the top eigenvector of their mean H rather than of one row's H_P."""
    K = float(window.steps)
    gbar = window.A.sum(0) / K
    v, parts, k = _hvp_direction(window)
    if x is None:
        x = gbar / gbar.norm() if float(gbar.norm()) > 0 else torch.ones_like(gbar) / math.sqrt(gbar.numel())
    Hv, gP = op.hvp(v, return_grad=True)
    Hv, gP = Hv.to(gbar.dtype), gP.to(gbar.dtype)
    ths = float(v @ Hv)
    total = float(k.sum())
    p = (parts @ Hv).double()
    ths_loo = (ths - p) * total / (total - k)
    if eigen is not None:
        r = lobpcg_top(lambda u: op.hvp(u).to(gbar.dtype), x, tol=eigen.tol, max_matvecs=eigen.max_hvps, keep=True)
        lam, rel, step = r.value, r.residual, r.vector.to(gbar.dtype)
    else:
        Hx = op.hvp(x).to(gbar.dtype)
        lam, x, Hx = ritz2(x, Hx, v, Hv)
        rel = float((Hx - lam * x).norm()) / max(abs(lam), 1e-300)
        nrm = float(Hx.norm())
        step = x + EIG_STEP * Hx / nrm if nrm > 0 and math.isfinite(nrm) else x
    return dict(
        tr_HS_b=ths,
        tr_HS_b_loo=ths_loo,
        tr_S_n=float(gP @ window.last),
        top_eig=lam,
        x=step / step.norm(),
        top_eig_residual=rel,
    )


#: The streaming mode's defaults: a row every WINDOW training steps (the window of mini-batch gradients it
#: averages), HVPs on STREAM_N fresh probe samples per row in GROUPS groups (the jackknife's).
WINDOW, STREAM_N, GROUPS = 100, 32, 8

#: The terms whose standard error comes from (tr S_n), or is at least, the spread of the last SPREAD_ROWS
#: streaming rows (:func:`successive_se`): each row has fresh probe samples, whose spread the window's
#: jackknife leaves out.
SPREAD_KEYS, SPREAD_ROWS = ("tr_S_n", "tr_HS_b", "top_eig"), 8


def _larger(a: float, b: float) -> float:
    """The larger of two standard errors, either of which may be NaN (unknown); NaN when both are."""
    return b if math.isnan(a) else a if math.isnan(b) else max(a, b)


class StreamEstimator:
    """The streaming rows of one monitor: collects the training's mini-batch gradients g_t into a :class:`Window`
    (:meth:`add`) and closes it with a row (:meth:`measure`) from the window and two HVPs on ``stream_n`` fresh
    samples of ``source`` (the training's map-style data set; without one, a random subset of ``probe``).

    model, loss, forward: as for :func:`lssr.diagnose`; bn, dropout, dtype, hvp_mode: its options for the HVPs.
    b: the training batch size of the g_t (None: unknown, no tr S_1 or B_simple); ``replacement=False`` gives
    tr S_1 the γ_{N,b} = (N − b)/(N − 1) of batches drawn without replacement from the N samples of ``source``.
    The monitor's generator (seeded with ``seed``) draws the window's signs and the fresh samples. ``eigen``: ‖H‖
    by up to ``eigen.max_hvps`` LOBPCG products per row (:func:`row_products`); None: one damped power step."""

    def __init__(
        self,
        model: nn.Module,
        loss: Any,
        *,
        source: Any,
        probe: Any,
        b: int | None,
        seed: int,
        window: int = WINDOW,
        groups: int = GROUPS,
        stream_n: int = STREAM_N,
        hvp_steps: int | None = HVP_STEPS,
        forward: Callable | None = None,
        replacement: bool = True,
        options: dict | None = None,
        eigen: Eigen | None = None,
    ):
        check_stream(groups, window, stream_n, hvp_steps)
        self.eigen = eigen
        self.hvp_steps = hvp_steps
        self.model, self.loss, self.forward = model, loss, forward
        self.source, self.probe = source, probe
        self.n = int(torch.utils._pytree.tree_leaves(probe)[0].shape[0])
        self.b, self.replacement = b, replacement
        self.train_size = len(source) if source is not None else None
        self.window, self.groups, self.stream_n = int(window), int(groups), int(stream_n)
        self.options = dict(options or {})
        self.generator = torch.Generator().manual_seed(int(seed))
        self.current: Window | None = None
        self.x: Tensor | None = None  # the warm start of ‖H‖
        self.recent: list[dict] = []  # the last SPREAD_ROWS rows' curvature terms
        self.hvp_mode: str | None = None
        self.rows = 0
        self.last_seconds = 0.0
        self._params: list | None = None
        self.batch_bn = False  # batch norm in train mode at the window's first step (probe batches of b)

    def add(self, start: int) -> None:
        """Adds the parameters' ``.grad`` (the step's g_t) to the window, opening one at step ``start`` if none is
        open (and noting whether batch norm is in train mode: then the row's HVPs use batches of b)."""
        if self.current is None:
            bns = _train_mode_bn(unwrap(self.model))
            if bns and self.b is None:
                raise LssrError(
                    f"SharpnessMonitor: batch norm in train mode ({bns[0]}) normalises each batch with its own "
                    "statistics, so the streaming rows need the training batch size b for their probe batches; "
                    "fix: pass the training DataLoader as data, or batch_sizes=[b]"
                )
            self.batch_bn = bool(bns)
            # the window's parameters (listed once: a walk of the modules costs)
            self._params = [p for p in unwrap(self.model).parameters() if p.requires_grad]
        g = grads_of(self._params)
        if g is None:
            raise LssrError(
                "SharpnessMonitor: the streaming mode reads the training's gradients, but no parameter has a .grad; "
                "fix: call monitor.step() after loss.backward() and before optimizer.step(), or stream=False"
            )
        if self.current is None:
            self.current = Window(
                self._params, self.groups, generator=self.generator, start=start, recent=self.hvp_steps
            )
        self.current.add(g)

    def full(self) -> bool:
        """Whether the open window has ``window`` steps and two in every group."""
        w = self.current
        return w is not None and w.steps >= self.window and w.ready()

    def probe_size(self) -> int:
        """The number of probe samples of a row: ``stream_n``; with batch norm in train mode, ``stream_n`` rounded
        up to a multiple of b (whole batches of b, each normalised with its own statistics)."""
        if not self.batch_bn:
            return self.stream_n
        return self.b * max(1, math.ceil(self.stream_n / self.b))

    def sample(self):
        """The row's probe samples: :meth:`probe_size` fresh samples of the training data set drawn with a seed of
        the monitor's generator, through the data set's own transform (the training's distribution, its random
        augmentation seeded by the monitor); for data without a map-style data set, a random subset of the
        probe set. The global random states are as before."""
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        size = self.probe_size()
        have = self.n if self.source is None else len(self.source)
        if self.batch_bn and size > have:
            raise LssrError(
                f"SharpnessMonitor: a probe batch of b = {self.b} samples (batch norm in train mode) needs {size} "
                f"samples, but the data have {have}; fix: more data, or a smaller training batch"
            )
        if self.source is None:
            idx = torch.randperm(self.n, generator=self.generator)[:size].sort().values
            return torch.utils._pytree.tree_map(lambda t: t[idx] if isinstance(t, torch.Tensor) else t, self.probe)
        with preserved_rng():
            torch.manual_seed(seed)
            batch, _ = collect(self.source, n=min(size, len(self.source)), seed=seed)
        return batch

    def _set_mode(self, op) -> None:
        """Sets the HVP mode of ``op``: the one found at the first row (the kept graph of ∇L when it works, the
        cheapest HVPs, without trying the others first; else the ``hvp_mode`` option's)."""
        o = self.options
        if self.hvp_mode is None and o.get("hvp_mode", "auto") == "auto":
            try:
                op.set_hvp_mode("graph", "SharpnessMonitor", graph_budget=memory_budget(op.device))
                self.hvp_mode = "graph"
            except (GraphTooLarge, NotImplementedError, RuntimeError):
                self.hvp_mode = _set_hvp_mode(op, "auto")
        elif self.hvp_mode is None:
            self.hvp_mode = _set_hvp_mode(op, o["hvp_mode"])
        else:
            op.set_hvp_mode(self.hvp_mode, "SharpnessMonitor", graph_budget=memory_budget(op.device))

    def measure(self) -> dict:
        """Closes the window: every streaming quantity with its standard error (:func:`stream_estimates`, the
        curvature terms' se at least the spread of consecutive rows), the window and the probe samples."""
        w, self.current = self.current, None
        o = self.options
        # with batch norm in train mode, each chunk of b probe samples is one batch normalised with its own statistics
        chunk, bn = (self.b, "batch") if self.batch_bn else (self.probe_size(), o["bn"])
        with preserved_rng():
            batch = self.sample()
            prep = prepare(self.model, self.loss, [batch], forward=self.forward, chunk_size=chunk, dtype=o.get("dtype"))
            with _restoring(prep.model, bn, o["dropout"]), torch.autocast(prep.device_type, enabled=False):
                op = prep.operator(chunk_size=chunk, batch_stats=self.batch_bn)
                self._set_mode(op)
                prod = row_products(op, w, self.x, self.eigen)
                self.x = prod["x"]
        gam = 1.0
        if not self.replacement and self.b is not None and self.train_size and self.train_size > 1:
            gam = (self.train_size - self.b) / (self.train_size - 1)
        # the spread of consecutive rows (fresh probe samples and batches each) in the standard errors
        self.recent = (self.recent + [{k: prod[k] for k in SPREAD_KEYS}])[-SPREAD_ROWS:]
        spread = {k: successive_se([r[k] for r in self.recent]) for k in SPREAD_KEYS}
        est = stream_estimates(w, prod, spread["tr_S_n"], self.b, gam)
        for key in ("tr_HS_b", "top_eig"):
            est[f"{key}_se"] = _larger(est[f"{key}_se"], spread[key])
        est["ias_b_se"] = _larger(est["ias_b_se"], _div(spread["tr_HS_b"], abs(est["tr_S_b"])))
        self.rows += 1
        return est | dict(
            kind="stream",
            window_start=w.start,
            window_steps=w.steps,
            b=self.b if self.b is not None else math.nan,
            top_eig_residual=prod["top_eig_residual"],
            probe_n=op.n,
            groups=w.M,
        )

    def state_dict(self) -> dict:
        """The warm start of ‖H‖, the recent rows' spread, the HVP mode and the generator (a resumed run starts a
        new window)."""
        return {
            "stream_rows": self.rows,
            "last_stream_seconds": self.last_seconds,
            "stream_x": self.x,
            "stream_recent": list(self.recent),
            "hvp_mode": self.hvp_mode,
            "stream_generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.rows = int(state.get("stream_rows", 0))
        self.last_seconds = float(state.get("last_stream_seconds", 0.0))
        self.x = state.get("stream_x")
        self.recent = list(state.get("stream_recent", []))
        self.hvp_mode = state.get("hvp_mode")
        if state.get("stream_generator") is not None:
            self.generator.set_state(state["stream_generator"])
        self.current = None
