"""Figures: every figure from its table CSV (built from synthetic runs) -> pdf, png and data csv."""

from __future__ import annotations

import importlib
import re

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from test_tables import shared_runs

from lssr import figures, tables
from lssr.figures import style
from lssr.registry import FIGURES
from lssr.tables import fig3, fig4


@pytest.fixture(scope="module")
def table_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("fig")
    runs = shared_runs(tmp_path_factory)
    out = root / "tables"
    tables.write_table("fig1", runs["sgd"] + runs["gd"][:2], out / "fig1.csv")
    tables.write_table("fig2", runs["sgd"] + runs["gd"][:2], out / "fig2.csv")
    tables.write_table("fig3", runs["valley"], out / "fig3.csv")
    tables.write_table("fig4", runs["gd"] + runs["sgd_bs"], out / "fig4.csv")
    tables.write_table("fig5", runs["heat"], out / "fig5.csv")
    tables.write_table("figC5", runs["sgd_bs"], out / "figC5.csv")
    tables.write_table("figS1", runs["gd"] + runs["sgd_bs"], out / "figS1.csv")
    return out


@pytest.mark.parametrize("fig", [f for f in FIGURES if f != "fig5"])  # fig5: below, from two tables
def test_figure_files_and_data(fig, table_dir, tmp_path):
    out = tmp_path / "figures" / f"{fig}.pdf"
    paths = figures.make_figure(fig, [table_dir / f"{fig}.csv"], out)
    assert paths["pdf"] == out and paths["png"] == out.with_suffix(".png")
    assert paths["data"] == tmp_path / "figures" / "data" / f"{fig}.csv"
    for p in paths.values():
        assert p.exists() and p.stat().st_size > 0
    assert out.read_bytes()[:4] == b"%PDF"
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    # the plotted data is exactly the table
    table = pd.read_csv(table_dir / f"{fig}.csv")
    data = pd.read_csv(paths["data"])
    pd.testing.assert_frame_equal(data, table)
    assert not list((tmp_path / "figures").rglob(".*.tmp"))


def test_fig5_several_tables(table_dir, tmp_path):
    t = pd.read_csv(table_dir / "fig5.csv")
    a = t[t["dataset"].isin(["analytic", "lssr_ds"])]
    b = t[t["dataset"] == "srsr_ds"]
    a.to_csv(tmp_path / "a.csv", index=False)
    b.to_csv(tmp_path / "b.csv", index=False)
    out = tmp_path / "figs" / "fig5.pdf"
    paths = figures.make_figure("fig5", [tmp_path / "a.csv", tmp_path / "b.csv"], out)
    assert figures.figure_summary(paths) == f"wrote {out}, {out.with_suffix('.png')}, {paths['data']}"
    data = pd.read_csv(tmp_path / "figs" / "data" / "fig5.csv")
    assert set(data.loc[data["kind"] == "cell", "dataset"]) == {"lssr_ds", "srsr_ds"}
    pd.testing.assert_frame_equal(data, pd.concat([a, b], ignore_index=True), check_dtype=False)
    assert out.read_bytes()[:4] == b"%PDF" and out.with_suffix(".png").stat().st_size > 0


def test_empty_tables_still_plot(tmp_path):
    for fig, cols in (("fig3", fig3.COLUMNS), ("fig4", fig4.COLUMNS)):
        pd.DataFrame(columns=cols).to_csv(tmp_path / f"{fig}.csv", index=False)
        paths = figures.make_figure(fig, [tmp_path / f"{fig}.csv"], tmp_path / "out" / f"{fig}.pdf")
        assert paths["pdf"].stat().st_size > 0


def test_missing_table_is_a_user_error(tmp_path):
    from lssr import LssrError

    with pytest.raises(LssrError, match="table not found"):
        figures.make_figure("fig1", [tmp_path / "nope.csv"], tmp_path / "fig1.pdf")
    with pytest.raises(LssrError, match="unknown figure 'fig9'"):
        figures.make_figure("fig9", [tmp_path / "nope.csv"], tmp_path / "fig9.pdf")


POW2 = re.compile(r"^\$2\^\{-?\d+\}\$$")


def visible_tick_labels(fig, axis) -> list:
    """The major tick labels of ``axis`` that are drawn (inside the view, with text)."""
    fig.canvas.draw()
    lo, hi = sorted(axis.get_view_interval())
    return [
        t
        for t, v in zip(axis.get_majorticklabels(), axis.get_majorticklocs())
        if t.get_visible() and t.get_text() and lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9)
    ]


def assert_one_format_no_overlap(fig, axis, where: str) -> None:
    labels = visible_tick_labels(fig, axis)
    texts = [t.get_text() for t in labels]
    assert len(texts) >= 2, f"{where}: {texts}"
    assert all(POW2.match(t) for t in texts), f"{where}: tick labels not all 2^k: {texts}"
    boxes = [t.get_window_extent(fig.canvas.get_renderer()) for t in labels]
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert not boxes[i].overlaps(boxes[j]), f"{where}: labels {texts[i]} and {texts[j]} overlap"


@pytest.mark.parametrize("lo,hi", [(0.09, 1.5), (0.3, 3.0), (3.0, 70.0), (2.0**-10, 2.0**12)])
def test_log2_axis_labels_every_tick_as_a_power_of_two(lo, hi):
    """On a narrow panel (Figure C.5's width) over short and wide ranges: only 2^k labels, none overlapping."""
    fig, axes = style.figure(1, 2, height=2.4)
    ax = axes[0][0]
    ax.plot([lo, hi], [lo, hi])
    style.log2_axis(ax, "x")
    style.log2_axis(ax, "y")
    for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
        assert_one_format_no_overlap(fig, axis, f"{name} over [{lo}, {hi}]")
    plt.close(fig)


@pytest.mark.parametrize("fig", list(FIGURES))
def test_every_log2_axis_of_the_figures(fig, table_dir):
    """Every base-2 log axis the figures draw (Figure C.5, 4, 5 ...) has 2^k labels only, none overlapping."""
    table = figures.load_tables([table_dir / f"{fig}.csv"])
    plotted, _ = importlib.import_module(f"lssr.figures.{fig}").plot(table)
    for k, ax in enumerate(plotted.axes):
        for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            if axis.get_scale() == "log" and getattr(axis.get_transform(), "base", None) == 2:
                assert_one_format_no_overlap(plotted, axis, f"{fig} axes {k} {name}")
    plt.close(plotted)


def test_fig5_marks_a_best_eta_at_the_grid_edge(table_dir):
    """tiny_ds's best η are the smallest probed η (censored low): drawn as downward triangles, with a legend entry;
    lssr_ds's interior best η as circles only."""
    from lssr.figures import fig5 as fig5_figure

    t = pd.read_csv(table_dir / "fig5.csv")
    fig, _ = fig5_figure.plot(t[t["dataset"].isin(["analytic", "tiny_ds"])])
    labels = [h.get_label() for leg in fig.legends for h in leg.legend_handles]
    assert r"best $\eta$ at the grid edge" in labels
    plt.close(fig)
    fig, _ = fig5_figure.plot(t[t["dataset"].isin(["analytic", "lssr_ds"])])
    assert r"best $\eta$ at the grid edge" not in [h.get_label() for leg in fig.legends for h in leg.legend_handles]
    plt.close(fig)


def test_fig5_hatches_cells_short_of_the_goal_and_draws_the_predicted_curve(table_dir):
    """Cells that did not reach the training-accuracy goal are hatched, with a legend entry; given fig5_rho rows
    beside the table, the LSSR curve predicted from the measured B_simple is drawn and its points (c·ρ_b, eq. (12)
    at that B_simple: b/(b + B) with replacement, 1/(1 + γB/b) without) are added to the plotted data."""
    from lssr.figures import fig5 as fig5_figure

    t = pd.read_csv(table_dir / "fig5.csv")
    t = t[t["dataset"].isin(["analytic", "lssr_ds"])].copy()
    low = (t["kind"] == "cell") & (t["lr"] < 2.0**-6)
    t.loc[low, "reached_goal"] = False
    B = 40.0
    rho = pd.DataFrame({"dataset": ["lssr_ds"], "b": [8], "lr": [0.01], "where": ["final"], "tr_S_1": [1 + B],
                        "tr_S_n": [1.0], "b_simple": [B]})  # fmt: skip
    fig, data = fig5_figure.plot(pd.concat([t, rho], ignore_index=True))
    labels = [h.get_label() for leg in fig.legends for h in leg.legend_handles]
    assert "short of the training-accuracy goal" in labels and r"LSSR from measured $\rho$" in labels
    hatched = [p for p in fig.axes[1].patches if p.get_hatch()]
    assert len(hatched) == int((low & ~t["diverged"].astype(bool)).sum())
    pred = data[data["kind"] == "predicted"].sort_values("b")
    n = int(t.loc[t["kind"] == "cell", "n"].iloc[0])
    b = pred["b"].to_numpy(float)
    eq12 = 1.0 / (1.0 + (n - b) / (n - 1) * B / b)  # the fixture's runs draw batches without replacement
    ratio = pred["lr"].to_numpy(float) / eq12
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-9)  # c·ρ_b: one constant c
    assert (pred["lr_lo"] <= pred["lr"] * (1 + 1e-9)).all() and (pred["lr"] <= pred["lr_hi"] * (1 + 1e-9)).all()
    plt.close(fig)
