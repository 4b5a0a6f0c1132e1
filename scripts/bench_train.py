#!/usr/bin/env python3
"""Training speed of pg_llm beside PyTorch, in one run.

    python scripts/bench_train.py [--pg-config .pg/pg16/bin/pg_config | --dsn DSN]
                                  [--threads 2] [--steps 10] [--shapes a,b]
                                  [--lengths 64,512,1024]

Two shapes, fp32, AdamW (weight decay 0.1 on 2-D weights, grad clip 1.0),
dropout 0, the same thread count on both sides:
  (a) 4 layers, 4 heads, 256 embedding, vocab 50257, B=8, T=64
  (b) gpt2-small (12 layers, 12 heads, 768 embedding), B=4, T=64
each at every T of --lengths, with B scaled to keep B*T tokens per step (at
least one sequence).

pg_llm is measured in the database: `SELECT llm_train(...)` on random token
blocks in llm_dataset; tokens/s is the mean of the steps' own figures in
llm_train_log (forward, backward and AdamW of a step), and the wall time of
the whole call is printed as well (it adds loading the model and data and
writing parameters plus AdamW state back).  PyTorch runs transformers'
GPT2LMHeadModel with torch.optim.AdamW (same decay grouping) and
clip_grad_norm_, timed over the same number of steps after two warm-up steps.
"""
import argparse
import os
import sys
import time

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from pg_llm_cy.cluster import open_server  # noqa: E402

SHAPES = {
    "a": dict(n_layer=4, n_head=4, n_embd=256, vocab=50257, B=8, T=64),
    "b": dict(n_layer=12, n_head=12, n_embd=768, vocab=50257, B=4, T=64),
}


def bench_pg_llm(conn, name, s, steps, threads):
    model = f"bench-train-{name}"
    dataset = f"bench-{name}"
    conn.execute("SELECT llm_drop_model(%s) FROM llm_model_config WHERE model = %s", (model, model))
    conn.execute("SELECT llm_create_model(%s, %s, %s, %s, 1024, %s, 1)",
                 (model, s["n_layer"], s["n_head"], s["n_embd"], s["vocab"]))
    conn.execute("DELETE FROM llm_dataset WHERE dataset = %s", (dataset,))
    rng = np.random.default_rng(0)
    T = s["T"]
    with conn.cursor().copy("COPY llm_dataset (dataset, tokens, target, split) FROM STDIN") as cp:
        for _ in range(64):
            row = rng.integers(0, s["vocab"], T + 1)
            cp.write_row((dataset, row[:-1].tolist(), row[1:].tolist(), "train"))
    conn.execute(f"SET pg_llm.num_threads = {threads}")
    # the first run loads the model into this backend; the timed one reuses it
    args = dict(model=model, batch_size=s["B"], block_size=T, dataset=dataset)
    sql = ("SELECT llm_train(%(model)s, %(n)s, batch_size => %(batch_size)s, "
           "block_size => %(block_size)s, warmup_iters => 0, eval_interval => 0, "
           "dataset => %(dataset)s, log_interval => 1000000)")
    conn.execute(sql, dict(args, n=2))
    first = conn.execute("SELECT max(id) FROM llm_train_log").fetchone()[0] or 0
    t = time.perf_counter()
    conn.execute(sql, dict(args, n=steps))
    wall = time.perf_counter() - t
    per_step = [r[0] for r in conn.execute(
        "SELECT tokens_per_s FROM llm_train_log WHERE model = %s AND id > %s ORDER BY id",
        (model, first))]
    conn.execute("SELECT llm_drop_model(%s)", (model,))
    conn.execute("DELETE FROM llm_dataset WHERE dataset = %s", (dataset,))
    return sum(per_step) / len(per_step), steps * s["B"] * T / wall


def bench_torch(s, steps, threads):
    import torch
    import transformers
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=s["n_layer"], n_head=s["n_head"], n_embd=s["n_embd"],
                                  vocab_size=s["vocab"], n_positions=1024, resid_pdrop=0.0,
                                  embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(cfg).train()
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=6e-4, betas=(0.9, 0.95), eps=1e-8)
    gen = torch.Generator().manual_seed(0)
    B, T, V = s["B"], s["T"], s["vocab"]

    def step():
        x = torch.randint(0, V, (B, T), generator=gen)
        y = torch.randint(0, V, (B, T), generator=gen)
        logits = model(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits.view(-1, V), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    for _ in range(2):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * B * T / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pg-config", default=os.environ.get("PG_CONFIG", ".pg/pg16/bin/pg_config"))
    ap.add_argument("--dsn")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--shapes", default="a,b")
    ap.add_argument("--lengths", default="64,512,1024", help="block sizes T")
    args = ap.parse_args()

    _, conn, cluster = open_server(args.dsn, args.pg_config)
    try:
        print(f"threads {args.threads}; {conn.execute('SELECT pg_llm_info()').fetchone()[0]}")
        try:
            import torch
            print(f"torch {torch.__version__}, {torch.get_num_threads()} default threads")
        except ImportError:
            torch = None
        for name, T in [(n, int(t)) for n in args.shapes.split(",") for t in args.lengths.split(",")]:
            s = dict(SHAPES[name], T=T, B=max(1, SHAPES[name]["B"] * SHAPES[name]["T"] // T))
            steps_ours, wall_ours = bench_pg_llm(conn, name, s, args.steps, args.threads)
            desc = (f"({name}) {s['n_layer']}L {s['n_head']}H {s['n_embd']}E V{s['vocab']} "
                    f"B={s['B']} T={s['T']}")
            line = f"{desc}: pg_llm {steps_ours:7.0f} tokens/s (whole llm_train call {wall_ours:.0f})"
            if torch is not None:
                theirs = bench_torch(s, args.steps, args.threads)
                line += f", PyTorch {theirs:7.0f} tokens/s, ratio {steps_ours / theirs:.2f}x"
            print(line, flush=True)
    finally:
        conn.close()
        if cluster is not None:
            cluster.destroy()


if __name__ == "__main__":
    main()
