"""The training-curve plot: the held-out loss of each run beside its training loss."""

from __future__ import annotations

from potstill.evaluation.report.plots import HELDOUT_TITLE, training_curves
from tests.evaluation.report.numbers import plausible_curves


def test_heldout_loss_gets_its_panel_only_when_logged():
    curves = plausible_curves()
    plot = training_curves(curves)
    assert plot is not None and plot.png.startswith(b"\x89PNG")
    assert HELDOUT_TITLE in plot.alt and "held-out loss" in plot.caption
    for rows in curves.values():
        for row in rows:
            row.pop("heldout_loss", None)
    assert HELDOUT_TITLE not in training_curves(curves).alt
