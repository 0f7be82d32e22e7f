"""The one registry of the paper's figures: name -> which experiment plans its runs, which
claims read its table, what its caption says. The planner, the table and figure commands,
the claims and the workflow schema all read :data:`FIGURES` (torch-free, cheap to import).
:data:`TABLES`: the tables that are not a figure's (built from a figure's runs, read by claims).
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


@dataclass(frozen=True)
class Table:
    """A table that is not a figure's: built from the runs of ``figure`` (planned with it) and read by ``claims``."""

    name: str
    figure: str
    title: str
    command: str  # the `lssr` command that writes it
    claims: tuple[str, ...] = ()


TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        Table(
            "fig5_rho",
            "fig5",
            "B_simple = (tr S_1 − tr S_n)/tr S_n of the trained Figure-5 models that reached the training goal",
            "lssr fig5-rho",
            ("C5",),
        ),
    )
}


def figure(name: str) -> Figure:
    """The registered figure ``name``; an unknown name raises, listing the known ones."""
    try:
        return FIGURES[name]
    except KeyError:
        raise LssrError(f"unknown figure {name!r}: choose one of {', '.join(FIGURES)}") from None


def claim_tables() -> tuple[str, ...]:
    """The tables that some claim reads: the figures' (in registry order), then :data:`TABLES`'."""
    return tuple(f.name for f in FIGURES.values() if f.claims) + tuple(t.name for t in TABLES.values() if t.claims)


def claim_tables_of(figures) -> tuple[str, ...]:
    """The tables some claim reads that a workflow building ``figures`` plans: those of the figures, then the
    :data:`TABLES` built from their runs."""
    return tuple(t for t in claim_tables() if (TABLES[t].figure if t in TABLES else t) in figures)


def figure_tables(fig: str) -> tuple[str, ...]:
    """The tables ``lssr figure fig`` draws: the figure's own, then the :data:`TABLES` built for it (Figure 5's
    ``fig5_rho``: the LSSR curve predicted from the measured ρ)."""
    return (figure(fig).name, *(t.name for t in TABLES.values() if t.figure == fig))
