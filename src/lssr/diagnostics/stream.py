"""The monitor's streaming estimates: tr S_b, tr S_n, tr S_1, B_simple, ρ_b, tr(H S_b), ‖H‖_{S_b} and ‖H‖
from the mini-batch gradients g_t that training computes anyway, and two Hessian-vector products per row
(``SharpnessMonitor(..., stream=True)``, opt-in; the monitor's default rows are :func:`lssr.diagnose`'s).

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
- ‖H‖: xᵀH_Px for a warm-started x that a damped power step per row moves towards the top eigenvector: it
  settles on ‖H‖ at a fixed θ but lags while θ moves (a lower estimate during training).

The training's g_t and the HVPs must be gradients of one loss: the monitor refuses batch norm in train mode
(batch statistics in g_t, running statistics in the HVPs).

Standard errors: the delete-one-group jackknife over the M groups; for tr(H S_b), ‖H‖_{S_b} and ‖H‖ at least the
spread of consecutive rows (:func:`successive_se`), which holds the spread of the probe samples.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import LssrError

Tensor = torch.Tensor

#: The weight of the new direction in the damped power step of ‖H‖'s warm start (:func:`row_products`).
EIG_STEP = 0.5


def grads_of(params: list[nn.Parameter]) -> list[Tensor] | None:
    """The ``.grad`` of each of ``params`` (zeros for a parameter without one, e.g. unused in the step); None when
    no parameter has a gradient (the call came before ``backward``)."""
    if all(p.grad is None for p in params):
        return None
    return [p.grad.detach() if p.grad is not None else torch.zeros_like(p) for p in params]


class Window:
    """The running sums of one window of training gradients g_t (length m), in M round-robin groups: per step one
    copy of the gradients into a flat buffer, a dot product and two in-place additions."""

    def __init__(self, params: list[Tensor], groups: int, *, generator: torch.Generator, start: int):
        self.M = int(groups)
        self.start = int(start)
        first = params[0]
        dim = sum(p.numel() for p in params)
        self.A = torch.zeros(self.M, dim, dtype=first.dtype, device=first.device)  # Σ_{t∈i} g_t
        self.Z = torch.zeros(self.M, dim, dtype=first.dtype, device=first.device)  # Σ_{t∈i} z_t g_t
        self._g = torch.empty(dim, dtype=first.dtype, device=first.device)
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
        g = torch.cat([t.reshape(-1) for t in grads], out=self._g)
        self.A[i].add_(g)
        self.Z[i].add_(g, alpha=z)
        self.q[i] += float(g.dot(g))
        self.k[i] += 1
        self.w[i] += z
        self.steps += 1

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
        "rho_b": tn / tb,
        "rho_b_se": abs(tn / tb) * math.hypot(_rel(tn_se, tn), _rel(tb_se, tb)),
        "ias_b": ths / tb,
        "ias_b_se": abs(ths / tb) * math.hypot(_rel(ths_se, ths), _rel(tb_se, tb)),
    }
    if b is not None and gamma > 0:
        f = b / gamma
        out["tr_S_1"] = tn + f * (tb - tn)
        out["tr_S_1_se"] = math.hypot((f - 1) * tn_se, f * tb_se)
        out["b_simple"] = f * (tb - tn) / tn if tn != 0 else math.nan
        out["b_simple_se"] = f * abs(tb / tn) * math.hypot(_rel(tb_se, tb), _rel(tn_se, tn)) if tn != 0 else math.nan
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


def check_groups(groups: int, window: int) -> None:
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


def row_products(op, window: Window, x: Tensor | None) -> dict:
    """The HVP part of a row, two products with the Hessian H_P of the probe samples: H_P v with v = ḡ + U/√K
    (ḡ the window's mean gradient, U = Σ_t z_t (g_t − ḡ) its centred sign sketch) and H_P x (x the unit warm
    start of ‖H‖; the window's mean direction at first).

    Returns ``tr_HS_b`` = vᵀH_Pv, its M leave-one-group-out values ``tr_HS_b_loo``, ``tr_S_n`` = g_Pᵀg_last (the
    probe samples' gradient, a by-product of the first product, against the window's last mini-batch gradient:
    both at the current θ and independent, so unbiased for ‖∇L(θ)‖²), ``top_eig`` ≈ xᵀH_Px, the next warm start
    ``x`` and the relative residual ``top_eig_residual`` = ‖H_Py − θ y‖/|θ| of the top Ritz pair (θ, y) in
    span{x, v} (:func:`ritz2`, free with the two products: the mean gradient leans towards the top eigenvector),
    the row's ‖H‖. Over the signs
    E[ḡᵀH_PU] = 0 and E[UᵀH_PU] = Σ_t (g_t − ḡ)ᵀH_P(g_t − ḡ), so E[vᵀH_Pv] = (1/K) Σ_t g_tᵀH_Pg_t exactly,
    whatever the gradients (their drift and oscillation over the window included); for independent g_t at one θ
    its mean is tr(H_P S_b), and over fresh probe samples tr(H S_b).
    Leaving group i out removes its share p_i = w_iᵀH_Pv (w_i = A_i/K + (Z_i − w_i ḡ)/√K, Σ_i w_i = v) and
    rescales by K/(K − k_i). The next warm start is y + EIG_STEP · H_Py/‖H_Py‖, normalised: a damped power step
    (Oja's iteration) that averages over the rows' fresh probe samples, so that it follows the top eigenvector of
    their mean H rather than of one row's H_P."""
    K = float(window.steps)
    gbar = window.A.sum(0) / K
    w = torch.tensor(window.w, dtype=gbar.dtype, device=gbar.device).unsqueeze(1)
    parts = window.A / K + (window.Z - w * gbar) / math.sqrt(K)  # w_i, (M, m)
    v = parts.sum(0)
    if x is None:
        x = gbar / gbar.norm() if float(gbar.norm()) > 0 else torch.ones_like(gbar) / math.sqrt(gbar.numel())
    Hv, gP = op.hvp(v, return_grad=True)
    Hv, gP = Hv.to(gbar.dtype), gP.to(gbar.dtype)
    Hx = op.hvp(x).to(gbar.dtype)
    ths = float(v @ Hv)
    k = torch.tensor(window.k, dtype=torch.float64)
    p = (parts @ Hv).double()
    ths_loo = (ths - p) * K / (K - k)
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
