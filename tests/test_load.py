"""A short run of scripts/load_test.py: 8 sessions generating from a model
while a ninth trains it (CALL llm_train_run, write-backs every 3 steps).
No errors, a model load per version a session meets (never per call), and
no backend's private memory ending above its first-half peak.  The 10-minute run
is the script itself:
    python scripts/load_test.py --minutes 10
"""
import io
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import load_test  # noqa: E402


def test_generate_while_training(pg_dsn, data_dir, monkeypatch):
    monkeypatch.setenv("PG_LLM_TEST_DATA", data_dir)
    report = io.StringIO()
    # (on 2 cores shared with 8 generating sessions the trainer makes about
    # 0.5 steps/s: write-backs every 3 steps give several new versions)
    r = load_test.run(pg_dsn, sessions=8, seconds=20, shape="tiny", checkpoint_interval=3,
                      max_growth_mb=32, out=report)
    print(report.getvalue())
    assert not r["failed"], r["failed"]
    assert r["errors"] == 0
    assert r["train_steps"] >= 6             # the trainer wrote the model back meanwhile
    assert all(s["calls"] > 5 and s["hits"] >= s["calls"] - s["loads"] - s["maps"] for s in r["sessions"])
    assert min(s["maps"] for s in r["sessions"]) >= 2       # they did see a new version
    # each version was read from the table once for the whole server
    assert sum(s["loads"] for s in r["sessions"]) <= r["writebacks"] + 2
