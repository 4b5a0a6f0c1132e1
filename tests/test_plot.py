"""scripts/plot_training.py: the smoothed training loss is an exponential
moving average with bias correction (no lag towards zero or the first
value at the start), and the validation loss before the first step and
after the last, when given, are drawn at either end of the curve."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import plot_training  # noqa: E402


def test_ema_is_bias_corrected():
    assert plot_training.ema([5.0, 5.0, 5.0], 0.9) == pytest.approx([5.0, 5.0, 5.0])
    # a falling loss: the average follows from the first step, never below it
    out = plot_training.ema([10.0, 8.0, 6.0, 4.0], 0.9)
    assert out[0] == pytest.approx(10.0)
    assert out[1] == pytest.approx((0.9 * 0.1 * 10 + 0.1 * 8) / (1 - 0.81))
    assert all(a > b for a, b in zip(out, out[1:]))


def test_initial_and_final_validation_loss_are_drawn(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    drawn = []
    import matplotlib.axes
    orig = matplotlib.axes.Axes.plot

    def spy(self, *args, **kw):
        drawn.append((list(args[0]) if args else [], list(args[1]) if len(args) > 1 else [], kw.get("label")))
        return orig(self, *args, **kw)
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy)
    rows = [(s, 1e-3, 10.0 - s, 9.5 - s if s % 2 == 0 else None) for s in range(1, 7)]
    out = tmp_path / "p.png"
    plot_training.plot(rows, str(out), "t", 0.9, initial_val=10.8, final_val=3.2)
    assert os.path.getsize(out) > 1000
    val = next(d for d in drawn if d[2] == "val loss")
    assert val[0] == [0, 2, 4, 6, 6] and val[1] == [10.8, 7.5, 5.5, 3.5, 3.2]
