"""The monitor's streaming estimates: tr S_b, tr S_n, tr S_1, B_simple, ρ_b, tr(H S_b), ‖H‖_{S_b} and ‖H‖
from the mini-batch gradients g_t that training computes anyway, and a few Hessian-vector products per row.

A window is K consecutive training steps t with mini-batch gradients g_t (batch size b), dealt round-robin
into M groups (group i: k_i steps, sum A_i = Σ_{t∈i} g_t, Σ_{t∈i} ‖g_t‖², and the sign sketch
Z_i = Σ_{t∈i} z_t g_t with z_t = ±1 from the monitor's own generator). Treating the g_t of a window as
independent draws at one θ (batches from a training set of N ≫ Kb samples; the parameters move during the
window, so each row describes the window's average, and the cross terms below see ∇L(θ_s)ᵀ∇L(θ_t)):

- tr S_b = E‖g_b‖²: the mean of ‖g_t‖²;
- tr S_n = ‖∇L‖²: the U-statistic Σ_{s≠t} g_sᵀg_t / (K(K − 1)) (McCandlish et al. 2018's unbiased
  combination of |G|² at batch sizes b and Kb);
- by identity (1), S_b − S_n = (γ_{N,b}/b)(S_1 − S_n): tr S_1 = tr S_n + (b/γ)(tr S_b − tr S_n),
  B_simple = (tr S_1 − tr S_n)/tr S_n, ρ_b = tr S_n/tr S_b;
- tr(H S_b) = E[g_bᵀ H g_b] with H from samples independent of the g_t: per group i, a fresh batch of
  probe samples with Hessian H_i (E H_i = H) and e_i = ḡ_{−i}ᵀ H_i ḡ_i + u_iᵀ H_i u_i/(k_i − 1), where ḡ_i is
  group i's mean gradient, ḡ_{−i} the other groups' and u_i = Σ_{t∈i} z_t (g_t − ḡ_i); E e_i = μᵀHμ +
  tr(H C_b) = tr(H S_b) (μ = ∇L, C_b = S_b − S_n);
- ‖H‖: a Rayleigh–Ritz step per row in the span of the last row's Ritz vector x and residual r, with the
  probe samples' Hessian H_P = mean_i H_i (warm-started across rows); the row's value is xᵀH_Px ± the spread of
  xᵀH_ix over the groups.

Every standard error is the delete-one-group jackknife over the M groups. Four tangents per group (ḡ_i,
u_i, x, r): the cost of a row is 4 Hessian-vector products on its probe samples.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import LssrError

Tensor = torch.Tensor


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

    def ready(self) -> bool:
        """Every group has at least two steps (the within-group centring needs them)."""
        return min(self.k) >= 2

    def sketches(self) -> Tensor:
        """The centred sign sketches u_i = Σ_{t∈i} z_t (g_t − ḡ_i) of the groups, (M, m)."""
        k = torch.tensor(self.k, dtype=self.A.dtype, device=self.A.device).unsqueeze(1)
        w = torch.tensor(self.w, dtype=self.A.dtype, device=self.A.device).unsqueeze(1)
        return self.Z - w * (self.A / k)


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


def derived(tb, tn, ths, lam, b: int | None, gamma: float) -> dict:
    """The row's quantities from tr S_b, tr S_n, tr(H S_b) and ‖H‖ (floats or tensors of leave-one-out values)."""
    noise = tb - tn
    out = {"tr_S_b": tb, "tr_S_n": tn, "tr_HS_b": ths, "ias_b": ths / tb, "rho_b": tn / tb, "top_eig": lam}
    if b is not None and gamma > 0:
        out["tr_S_1"] = tn + (b / gamma) * noise
        out["b_simple"] = (b / gamma) * noise / tn
    else:
        out["tr_S_1"] = out["b_simple"] = math.nan
    return out


def check_groups(groups: int, window: int) -> None:
    if not isinstance(groups, int) or groups < 2:
        raise LssrError(f"SharpnessMonitor: groups must be an integer >= 2, got {groups!r}")
    if not isinstance(window, int) or window < 2 * groups:
        raise LssrError(
            f"SharpnessMonitor: window = {window!r} steps is too short for {groups} groups (each needs two steps); "
            f"fix: window >= {2 * groups}, or fewer groups"
        )


def row_products(op, window: Window, x: Tensor | None) -> tuple[float, Tensor, float, Tensor, float]:
    """The HVP part of a row, two products with the Hessian H_P of the row's probe samples: H_P v with
    v = ḡ + c U (ḡ the window's mean gradient, U = Σ_i u_i the centred sign sketches of all groups,
    c² = (1 − 1/K)/(K − M)) and H_P x (x the unit warm start of ‖H‖; the window's mean direction at first).

    Returns (tr(H S_b) = vᵀH_Pv, its M leave-one-group-out values, ‖H‖ ≈ xᵀH_Px, the next warm start, the
    relative residual ‖H_Px − (xᵀH_Px) x‖/|xᵀH_Px|). Over the signs E[ḡᵀHU] = 0 and E[UᵀHU] = Σ_{t}
    (g_t − ḡ_{i(t)})ᵀH(g_t − ḡ_{i(t)}), whose mean over the gradients is (K − M) tr(H C_b), while
    E[ḡᵀHḡ] = μᵀHμ + tr(H C_b)/K: so vᵀHv is unbiased for μᵀHμ + tr(H C_b) = tr(H S_b) when E H_P = H.
    Leaving group i out removes its share p_i = w_iᵀH_Pv (w_i = A_i/K + c u_i, Σ_i w_i = v) and rescales by
    K/(K − k_i); H_P is held fixed, so the spread of the probe samples is not in the standard error. The next
    warm start is x + H_Px/(xᵀH_Px), normalised: a power step of I + H/‖H‖, which averages over the rows'
    fresh probe samples."""
    u = window.sketches()
    K, M = float(window.steps), window.M
    gbar = window.A.sum(0) / K
    c = math.sqrt((1 - 1 / K) / (K - M))
    v = gbar + c * u.sum(0)
    if x is None:
        x = gbar / gbar.norm() if float(gbar.norm()) > 0 else torch.ones_like(gbar) / math.sqrt(gbar.numel())
    Hv, Hx = (op.hvp(t).to(gbar.dtype) for t in (v, x))
    ths = float(v @ Hv)
    k = torch.tensor(window.k, dtype=torch.float64)
    p = (torch.addmm(window.A @ Hv.unsqueeze(1), u, Hv.unsqueeze(1), beta=1 / K, alpha=c)).squeeze(1).double()
    ths_loo = (ths - p) * K / (K - k)
    lam = float(x @ Hx)
    rel = float((Hx - lam * x).norm()) / max(abs(lam), 1e-300)
    step = x + Hx / lam if lam > 0 and math.isfinite(lam) else x
    return ths, ths_loo, lam, step / step.norm(), rel


def stream_estimates(window: Window, ths: float, ths_loo: Tensor, lam: float, b: int | None, gamma: float) -> dict:
    """Every streaming quantity of a window with its jackknife standard error (``<name>_se``): tr S_b, tr S_n,
    tr S_1, B_simple, ρ_b, tr(H S_b), ‖H‖_{S_b} = tr(H S_b)/tr S_b; ‖H‖ (``lam``) without one (NaN)."""
    tb, tn, tb_loo, tn_loo = window_moments(window.A, window.q, window.k)
    full = derived(tb, tn, ths, lam, b, gamma)
    loo = derived(tb_loo, tn_loo, ths_loo, math.nan, b, gamma)
    out = {}
    for key, value in full.items():
        out[key] = float(value)
        out[f"{key}_se"] = jackknife(loo[key]) if isinstance(loo[key], Tensor) else math.nan
    return out
