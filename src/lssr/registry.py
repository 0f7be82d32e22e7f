"""The one registry of the paper's figures: name -> which experiment plans its runs, which
claims read its table, what its caption says. The planner, the table and figure commands,
the claims and the workflow schema all read :data:`FIGURES` (torch-free, cheap to import).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import LssrError


@dataclass(frozen=True)
class Figure:
    name: str
    experiment: str  # the section of ``experiments:`` in a workflow config that plans its runs
    title: str
    claims: tuple[str, ...] = ()  # claims whose statistic is read from this figure's table


FIGURES: dict[str, Figure] = {
    f.name: f
    for f in (
        Figure("fig1", "fig1", "loss change vs instability ratio, early phase (eqs. 6, 9)", ("C1",)),
        Figure("fig2", "fig1", "loss change vs instability ratio, whole run (after the edge)", ("C6",)),
        Figure("fig3", "fig3", "asymmetric valleys along -∇L (GD)", ("C7",)),
        Figure("fig4", "fig4", "‖H‖_{S_b} against 2ρ_b/η over training (GD and SGD)", ("C2", "C3")),
        Figure("fig5", "fig5", "LSSR: test-accuracy heatmaps over (b, η) and the best η per b", ("C5",)),
        Figure("figC5", "fig4", "ρ_b against R̄_b² and eq. (12) (Appendix C.5)", ("C4", "K1")),
        Figure("figS1", "fig4", "cos(q_1, ∇L) and cos(g_t, g_{t+1}) over training, 2/η crossings marked", ("C8", "C9")),
    )
}


def figure(name: str) -> Figure:
    """The registered figure ``name``; an unknown name raises, listing the known ones."""
    try:
        return FIGURES[name]
    except KeyError:
        raise LssrError(f"unknown figure {name!r}: choose one of {', '.join(FIGURES)}") from None


def claim_tables() -> tuple[str, ...]:
    """The figure tables that some claim reads, in registry order."""
    return tuple(f.name for f in FIGURES.values() if f.claims)
