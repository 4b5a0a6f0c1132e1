#!/usr/bin/env python3
"""Serving many: batched generation, the memory of many sessions, and a new
session's first call.

    python scripts/bench_serve.py [--pg-config .pg/pg16/bin/pg_config]
                                  [--batches 1,4,8,16,32,64] [--sessions 1,4,8]
                                  [--shapes small,medium]

On random-weight models of GPT-2's shapes (registered as bench_small, ...),
with 2 threads, everything in one run on a throwaway cluster:

- batch throughput: generated tokens/s of llm_generate_batch over B prompts
  of 16 tokens, 64 greedy tokens each (eos off), for each B, beside
  llm_generate of the same prompts one after another; target: B = 32 gives
  >= 8x the single-prompt tokens/s;
- memory: the sum of the proportional set size (Pss, /proc/<pid>/smaps_rollup)
  of N sessions that have each generated, beside the size of the weights;
  target: at most 1.5 x the weights + 64 MB per session;
- first call: the latency of a fresh session's first llm_logits (the model
  alone) and llm_generate (the model and the tokenizer, 1 new token), cold
  (the first backend of a freshly started server, no cache file: it builds
  it) and warm (another backend maps the model already); target: warm
  <= 50 ms for gpt2-small;
- with --xl: a gpt2-xl-shaped model (6 GB of weights) generating from 4
  sessions at once with the server's default settings; target: all 4 work
  on a 24 GB machine.

The server must run on this machine (it reads /proc of its backends).
"""
import argparse
import os
import shutil
import sys
import time

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import psycopg  # noqa: E402
from pg_llm_cy.cluster import LocalCluster, bindir_of  # noqa: E402

SHAPES = {"small": (12, 12, 768, 1024), "medium": (24, 16, 1024, 1024), "xl": (48, 25, 1600, 1024)}
VOCAB = 50257


def pss_mb(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no Pss for {pid}")


def connect(dsn):
    c = psycopg.connect(dsn, autocommit=True)
    c.execute("SET pg_llm.num_threads = 2")
    return c


def first_call(dsn, sql):
    """Seconds of sql in a new session (the connection itself not counted)."""
    with connect(dsn) as c:
        c.execute("SELECT 1")
        t = time.perf_counter()
        c.execute(sql)
        return time.perf_counter() - t


def setup_models(dsn, shapes, data_dir):
    with connect(dsn) as c:
        for shape in shapes:
            L, H, C, T = SHAPES[shape]
            model = f"bench_{shape}"
            c.execute("SELECT llm_drop_model(model) FROM llm_model_config WHERE model = %s", (model,))
            c.execute("SELECT llm_create_model(%s, %s, %s, %s, %s, %s, 1)", (model, L, H, C, T, VOCAB))
            for fn, name in (("pg_llm_load_bpe_vocab_text", "vocab.json"),
                             ("pg_llm_load_bpe_merges_text", "merges.txt")):
                with open(os.path.join(data_dir, "gpt2", name), encoding="utf-8") as f:
                    c.execute(f"SELECT {fn}(%s, %s)", (f.read(), model))


def bench_memory(dsn, model, counts, out):
    with connect(dsn) as c:
        weights_mb = c.execute("SELECT bytes / 1048576.0 FROM llm_models WHERE model = %s",
                               (model,)).fetchone()[0]
    print(f"\nmemory: sessions that have generated with {model} ({weights_mb:.0f} MB of weights)", file=out)
    print("sessions  sum of Pss MB  target MB  per session MB", file=out)
    rows = []
    for n in counts:
        sessions = [connect(dsn) for _ in range(n)]
        try:
            for s in sessions:
                s.execute("SELECT llm_generate('Hello', 8, 0, model => %s)", (model,))
            pids = [s.execute("SELECT pg_backend_pid()").fetchone()[0] for s in sessions]
            total = sum(pss_mb(p) for p in pids)
            target = 1.5 * float(weights_mb) + 64 * n
            rows.append((n, total, target))
            print(f"{n:8d}  {total:13.0f}  {target:9.0f}  {total / n:14.0f}", file=out)
        finally:
            for s in sessions:
                s.close()
    return rows


# 16 GPT-2 tokens each: a distinct start, then a common sentence
BATCH_PROMPT = "{} said that the old house on the hill was full of light and"


def bench_batch(dsn, model, batches, out, new_tokens=64):
    """Generated tokens/s of llm_generate_batch for each B, and of llm_generate."""
    names = ["Alice", "Bob", "Carol", "Dave", "Eve", "Frank", "Grace", "Heidi"]
    with connect(dsn) as c:
        lens = {len(c.execute("SELECT llm_encode(%s, %s)", (BATCH_PROMPT.format(n), model)).fetchone()[0])
                for n in names}
        prompts = [BATCH_PROMPT.format(names[i % len(names)]) + f" {i}" for i in range(max(batches + [4]))]
        c.execute(f"SET pg_llm.max_batch_size = {max(batches)}")
        c.execute("SELECT count(*) FROM llm_generate_batch(%s, 4, 0, model => %s)", (prompts[:2], model))
        t = time.perf_counter()
        for p in prompts[:4]:
            c.execute("SELECT llm_generate(%s, %s, 0, model => %s, eos_token => -1)",
                      (p, new_tokens, model))
        single = 4 * new_tokens / (time.perf_counter() - t)
        print(f"\nbatched generation with {model}: prompts of {min(lens) + 1}-{max(lens) + 2} tokens, "
              f"{new_tokens} greedy tokens each", file=out)
        print("B    tokens/s  vs llm_generate", file=out)
        print(f"llm_generate {single:8.1f}  1.00x", file=out)
        rows = []
        for b in batches:
            t = time.perf_counter()
            got = c.execute("SELECT count(*) FROM llm_generate_batch(%s, %s, 0, model => %s, eos_token => -1)",
                            (prompts[:b], new_tokens, model)).fetchone()[0]
            rate = b * new_tokens / (time.perf_counter() - t)
            assert got == b
            rows.append((b, rate, rate / single))
            print(f"B={b:<3d}       {rate:8.1f}  {rate / single:5.2f}x", file=out)
    return single, rows


def bench_first_call(cluster, dsn, model, out):
    logits = f"SELECT length(llm_logits('{{1,2,3}}', '{model}'))"
    generate = f"SELECT llm_generate('Hello', 1, 0, model => '{model}')"
    # cold: a freshly started server and no cache file
    cluster.stop()
    shutil.rmtree(os.path.join(cluster.data, "pgsql_tmp_pg_llm_cache"), ignore_errors=True)
    cluster.start()
    cold_logits = first_call(dsn, logits)
    cold_generate = first_call(dsn, generate)
    # warm: another backend holds the model
    holder = connect(dsn)
    holder.execute(generate)
    warm_logits = min(first_call(dsn, logits) for _ in range(5))
    warm_generate = min(first_call(dsn, generate) for _ in range(5))
    holder.close()
    print(f"{model:13s}  {cold_logits * 1e3:13.0f}  {cold_generate * 1e3:15.0f}  "
          f"{warm_logits * 1e3:13.1f}  {warm_generate * 1e3:15.1f}", file=out)
    return warm_logits, warm_generate


def bench_xl(dsn, data_dir, out, sessions=4):
    """gpt2-xl from 4 sessions at once, default settings: each generates, and
    the sum of their Pss stays near one copy of the weights."""
    import threading
    setup_models(dsn, ["xl"], data_dir)
    with psycopg.connect(dsn, autocommit=True) as c:        # no SET: the defaults
        weights_mb = c.execute("SELECT bytes / 1048576.0 FROM llm_models WHERE model = 'bench_xl'").fetchone()[0]
    conns = [psycopg.connect(dsn, autocommit=True) for _ in range(sessions)]
    results, errors = [None] * sessions, []

    def run(i):
        try:
            t = time.perf_counter()
            text = conns[i].execute("SELECT llm_generate('Hello', 8, 0, model => 'bench_xl')").fetchone()[0]
            results[i] = (time.perf_counter() - t, text)
        except psycopg.Error as e:
            errors.append(str(e))
    threads = [threading.Thread(target=run, args=(i,)) for i in range(sessions)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    pids = [c.execute("SELECT pg_backend_pid()").fetchone()[0] for c in conns]
    total = sum(pss_mb(p) for p in pids)
    for c in conns:
        c.close()
    print(f"\ngpt2-xl shape ({weights_mb:.0f} MB of weights), {sessions} sessions at once, default settings:",
          file=out)
    if errors:
        print(f"  FAILED: {errors[0]}", file=out)
    else:
        print(f"  all {sessions} generated 8 tokens in {wall:.1f} s (slowest session "
              f"{max(r[0] for r in results):.1f} s); sum of Pss {total:.0f} MB", file=out)
    return not errors, total


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pg-config", default=os.environ.get("PG_CONFIG", ".pg/pg16/bin/pg_config"))
    ap.add_argument("--data-dir", default=os.environ.get("PG_LLM_TEST_DATA", "data"),
                    help="the directory of gpt2/vocab.json and gpt2/merges.txt "
                         "(scripts/download_tokenizer.py fetches them)")
    ap.add_argument("--batches", default="1,4,8,16,32,64")
    ap.add_argument("--sessions", default="1,4,8")
    ap.add_argument("--shapes", default="small,medium")
    ap.add_argument("--xl", action="store_true", help="also gpt2-xl from 4 sessions (minutes, 13 GB of disk)")
    a = ap.parse_args(argv)
    shapes = a.shapes.split(",")
    cluster = LocalCluster(bindir_of(a.pg_config), settings={"max_connections": 60}).initdb().start()
    out = sys.stdout
    try:
        dsn = cluster.dsn
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("CREATE EXTENSION pg_llm")
        setup_models(dsn, shapes, a.data_dir)
        if a.batches:
            bench_batch(dsn, f"bench_{shapes[0]}", [int(b) for b in a.batches.split(",")], out)
        bench_memory(dsn, f"bench_{shapes[0]}", [int(n) for n in a.sessions.split(",")], out)
        print("\nfirst call of a new session, ms (cold: first backend of a fresh server, no cache file;"
              " warm: another backend maps the model; best of 5)", file=out)
        print("model          cold llm_logits  cold llm_generate  warm llm_logits  warm llm_generate", file=out)
        for shape in shapes:
            bench_first_call(cluster, dsn, f"bench_{shape}", out)
        if a.xl:
            bench_xl(dsn, a.data_dir, out)
    finally:
        cluster.destroy()


if __name__ == "__main__":
    main()
