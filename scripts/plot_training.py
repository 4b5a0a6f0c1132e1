#!/usr/bin/env python3
"""Draw a model's training curve from llm_train_log to a PNG.

    python scripts/plot_training.py --model M [--out training.png] [--dsn DSN]
                                    [--from-step N] [--smooth 0.9]

Top: training loss per step (and an exponential moving average with
--smooth) and validation loss where it was measured; bottom: the learning
rate.  matplotlib is an optional extra: pip install 'pg_llm_cy[plot]'.
"""
import argparse
import os
import sys

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import psycopg  # noqa: E402

from pg_llm_cy.client import default_dsn  # noqa: E402


def fetch(conn, model, from_step=0):
    """Rows (step, lr, loss, val_loss) of a model's log, the latest run's value per step."""
    return conn.execute(
        "SELECT DISTINCT ON (step) step, lr, loss, val_loss FROM llm_train_log "
        "WHERE model = %s AND step >= %s ORDER BY step, id DESC", (model, from_step)).fetchall()


def ema(values, alpha):
    """Exponential moving average with bias correction (as Adam's moments):
    the average of the first steps is not pulled towards zero or towards
    the very first value."""
    out, acc = [], 0.0
    for t, v in enumerate(values, 1):
        acc = alpha * acc + (1 - alpha) * v
        out.append(acc / (1 - alpha ** t))
    return out


def plot(rows, out, title, smooth=0.0, initial_val=None, final_val=None):
    """initial_val / final_val: the validation loss before the first step and
    after the last (llm_evaluate), drawn at either end of the curve."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("plot_training.py needs matplotlib: pip install 'pg_llm_cy[plot]'")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r[0] for r in rows]
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(8, 6), sharex=True,
                                         gridspec_kw={"height_ratios": [3, 1]})
    ax_loss.plot(steps, [r[2] for r in rows], lw=0.8, alpha=0.5 if smooth else 1.0,
                 label="train loss")
    if smooth:
        ax_loss.plot(steps, ema([r[2] for r in rows], smooth), lw=1.5, label=f"train loss (EMA {smooth})")
    val = [(r[0], r[3]) for r in rows if r[3] is not None]
    if initial_val is not None:
        val.insert(0, (steps[0] - 1, initial_val))
    if final_val is not None:
        val.append((steps[-1], final_val))
    if val:
        ax_loss.plot([v[0] for v in val], [v[1] for v in val], "o-", lw=1.5, ms=4, label="val loss")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title(title)
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    ax_lr.plot(steps, [r[1] for r in rows], color="tab:green")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("step")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dsn", default=default_dsn())
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", default="training.png")
    ap.add_argument("--from-step", type=int, default=0)
    ap.add_argument("--smooth", type=float, default=0.0, help="EMA factor in [0, 1) for the train loss")
    a = ap.parse_args(argv)
    if not 0 <= a.smooth < 1:
        ap.error("--smooth must lie in [0, 1)")
    with psycopg.connect(a.dsn) as conn:
        rows = fetch(conn, a.model, a.from_step)
    if not rows:
        raise SystemExit(f"plot_training.py: llm_train_log has no steps of model {a.model!r}")
    plot(rows, a.out, f"{a.model}: {len(rows)} steps", a.smooth)
    print(f"{a.out}: {len(rows)} steps, last loss {rows[-1][2]:.4f}")


if __name__ == "__main__":
    main()
