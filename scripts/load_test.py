#!/usr/bin/env python3
"""Load: N sessions generate from one model while another session trains it.

    python scripts/load_test.py [--pg-config .pg/pg16/bin/pg_config | --dsn DSN]
                                [--sessions 8] [--minutes 10] [--shape small|tiny]
                                [--checkpoint-interval 50]

Each generating session (its own connection, one thread) calls
llm_generate(prompt, 32 new tokens) in a loop; one more session runs
CALL llm_train_run on the same model for the whole time, writing the model
back every --checkpoint-interval steps, so the generating sessions see new
versions of it.  Reported: tokens/s per session, errors (must be 0), model
table reads ("loads": the session built the shared cache file, or kept a
private copy), shared cache maps and cache hits per session (a map per
version seen, never per call), the private memory (RssAnon) of every backend after warm-up and at
the end, and the training steps done.  The exit status is 1 if anything
failed: an error, a load per call, or a backend whose memory at the end is
more than --max-growth-mb above its peak in the first half of the run.
"""
import argparse
import os
import sys
import threading
import time

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import psycopg  # noqa: E402
from pg_llm_cy.cluster import open_server  # noqa: E402

SHAPES = {"small": (12, 12, 768, 1024, 50257), "tiny": (2, 4, 128, 256, 50257)}
PROMPTS = ["Once upon a time", "The database", "ROMEO:", "In the beginning", "SELECT", "Hello"]


def rss_anon_mb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class Generator(threading.Thread):
    def __init__(self, dsn, model, i, stop):
        super().__init__(daemon=True)
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.conn.execute("SET pg_llm.num_threads = 1")
        self.pid = self.conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        self.model, self.i, self.stop = model, i, stop
        self.tokens = self.calls = 0
        self.errors = []
        self.rss = []
        self.t0 = self.t1 = None

    def run(self):
        self.t0 = time.perf_counter()
        n = 0
        while not self.stop.is_set():
            try:
                self.conn.execute("SELECT llm_generate(%s, 32, 0.8, 50, 0.95, %s, -1, %s)",
                                  (PROMPTS[(self.i + n) % len(PROMPTS)], self.model, self.i * 100003 + n))
                self.tokens += 32
                self.calls += 1
            except psycopg.Error as e:
                self.errors.append(str(e))
            n += 1
        self.t1 = time.perf_counter()

    def stats(self):
        return self.conn.execute("SELECT model_loads, cache_hits, cache_mb, working_mb, model_maps "
                                 "FROM pg_llm_backend_stats()").fetchone()


class Trainer(threading.Thread):
    def __init__(self, dsn, model, seconds, checkpoint_interval):
        super().__init__(daemon=True)
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.conn.execute("SET pg_llm.num_threads = 1")
        self.pid = self.conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        self.model, self.seconds, self.ci = model, seconds, checkpoint_interval
        self.error = None

    def run(self):
        try:
            self.conn.execute(
                "CALL llm_train_run(%s, 1000000, batch_size => 4, block_size => 64, learning_rate => 3e-4, "
                "warmup_iters => 10, eval_interval => 0, max_seconds => %s, checkpoint_interval => %s, "
                "dataset => 'load_test', log_interval => 1000000)",
                (self.model, float(self.seconds), self.ci))
        except psycopg.Error as e:
            self.error = str(e)


def run(dsn, sessions=8, seconds=600, shape="small", checkpoint_interval=50, max_growth_mb=64.0,
        out=sys.stdout):
    """Returns a dict of the results; prints a report to out."""
    model = f"load_{shape}"
    L, H, C, T, V = SHAPES[shape]
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS pg_llm")
        c.execute("SELECT llm_drop_model(model) FROM llm_model_config WHERE model = %s", (model,))
        c.execute("SELECT llm_create_model(%s, %s, %s, %s, %s, %s, 1)", (model, L, H, C, T, V))
        c.execute("DELETE FROM llm_dataset WHERE dataset = 'load_test'")
        rng = np.random.default_rng(0)
        with c.cursor().copy("COPY llm_dataset (dataset, tokens, target) FROM STDIN") as cp:
            for _ in range(64):
                r = rng.integers(0, V, 65)
                cp.write_row(("load_test", r[:-1].tolist(), r[1:].tolist()))
        if not c.execute("SELECT count(*) FROM llm_vocab WHERE model = %s", (model,)).fetchone()[0]:
            data = os.environ.get("PG_LLM_TEST_DATA",
                                  os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                               "..", "shared", "data"))
            for fn, name in (("pg_llm_load_bpe_vocab_text", "vocab.json"),
                             ("pg_llm_load_bpe_merges_text", "merges.txt")):
                with open(os.path.join(data, "gpt2", name), encoding="utf-8") as f:
                    c.execute(f"SELECT {fn}(%s, %s)", (f.read(), model))

    stop = threading.Event()
    gens = [Generator(dsn, model, i, stop) for i in range(sessions)]
    # warm-up: every session loads the model once
    for g in gens:
        g.conn.execute("SELECT llm_generate('x', 1, 0, 50, 1.0, %s, -1)", (model,))
        g.rss.append(rss_anon_mb(g.pid))
    trainer = Trainer(dsn, model, seconds, checkpoint_interval)
    t0 = time.perf_counter()
    for g in gens:
        g.start()
    trainer.start()
    samples = 0
    while time.perf_counter() - t0 < seconds:
        time.sleep(min(5.0, max(seconds / 10, 0.5)))
        samples += 1
        for g in gens:
            g.rss.append(rss_anon_mb(g.pid))
    stop.set()
    for g in gens:
        g.join(120)
    trainer.join(max(120, seconds))
    for g in gens:
        g.rss.append(rss_anon_mb(g.pid))

    with psycopg.connect(dsn, autocommit=True) as c:
        steps = c.execute("SELECT train_step FROM llm_model_config WHERE model = %s", (model,)).fetchone()[0]
    writebacks = steps // checkpoint_interval + 1
    result = {"sessions": [], "errors": sum(len(g.errors) for g in gens) + (trainer.error is not None),
              "train_steps": steps, "writebacks": writebacks, "failed": []}
    print(f"{sessions} sessions x {seconds:.0f} s on {model} ({L} layers, {C} wide), "
          f"training alongside: {steps} steps, {writebacks} write-backs", file=out)
    print("session  tokens/s  calls  errors  loads  maps  cache hits  RssAnon MB (warm -> half-time -> end)",
          file=out)
    for g in gens:
        loads, hits, cache_mb, working_mb, maps = g.stats()
        tps = g.tokens / max(g.t1 - g.t0, 1e-9)
        mid = g.rss[len(g.rss) // 2]
        # stable: the end is no higher than the first half's peak (a dip at
        # half-time, between freeing one version and loading the next, is
        # not growth)
        growth = g.rss[-1] - max(g.rss[:len(g.rss) // 2 + 1])
        result["sessions"].append(dict(tokens_per_s=tps, calls=g.calls, errors=len(g.errors), loads=loads,
                                       maps=maps, hits=hits, rss=g.rss, growth_mb=growth))
        print(f"{g.i:7d}  {tps:8.1f}  {g.calls:5d}  {len(g.errors):6d}  {loads:5d}  {maps:4d}  {hits:10d}  "
              f"{g.rss[0]:.0f} -> {mid:.0f} -> {g.rss[-1]:.0f}", file=out)
        if g.errors:
            result["failed"].append(f"session {g.i}: {g.errors[0]}")
        # one map (or, without the shared cache, one load) per version the
        # session met, never one per call
        got = max(maps, loads)
        if got > writebacks + 2 or got * 4 > g.calls + 4:
            result["failed"].append(f"session {g.i}: {loads} loads and {maps} maps for {g.calls} calls")
        if growth > max_growth_mb:
            result["failed"].append(f"session {g.i}: private memory ended {growth:.0f} MB above its first-half peak")
    total = sum(s["tokens_per_s"] for s in result["sessions"])
    print(f"total {total:.1f} tokens/s; errors {result['errors']}; trainer "
          f"{'ok' if trainer.error is None else trainer.error}", file=out)
    if trainer.error:
        result["failed"].append(f"trainer: {trainer.error}")
    result["total_tokens_per_s"] = total
    for g in gens:
        g.conn.close()
    trainer.conn.close()
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pg-config", default=os.environ.get("PG_CONFIG", ".pg/pg16/bin/pg_config"))
    ap.add_argument("--dsn")
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="small")
    ap.add_argument("--checkpoint-interval", type=int, default=50)
    ap.add_argument("--max-growth-mb", type=float, default=64)
    a = ap.parse_args()
    dsn, conn, cluster = open_server(a.dsn, a.pg_config, settings={"max_connections": 60})
    conn.close()
    try:
        r = run(dsn, a.sessions, a.minutes * 60, a.shape, a.checkpoint_interval, a.max_growth_mb)
    finally:
        if cluster is not None:
            cluster.destroy()
    for f in r["failed"]:
        print("FAILED:", f)
    return 1 if r["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
