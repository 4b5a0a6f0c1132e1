#!/usr/bin/env python3
"""Generation speed of pg_llm beside HuggingFace transformers, in one run.

    python scripts/bench_generate.py [--pg-config .pg/pg16/bin/pg_config | --dsn DSN]
                                     [--threads 2] [--data DIR]

On a gpt2-small-shaped model (random weights: speed does not depend on them):
  * decode: a 16-token prompt, 64 greedy new tokens, batch 1 -- tokens/s of
    llm_generate (end to end, one SQL call) and of transformers' generate with
    use_cache=True, the same thread count;
  * the memory-bandwidth ceiling: 124M fp32 parameters are read per token, so
    tokens/s <= read bandwidth / 0.5 GB (the streaming read measured here);
  * first call: a fresh backend, cold cache, `SELECT llm_generate(...)` of one
    token (loads the model and the tokenizer);
  * time to the first token: llm_generate of 1 token after the 16-token
    prompt on a warm connection, beside transformers' forward of the prompt;
  * long prompts: tokens/s of llm_loss over T = 64, 256, 512, 1024 tokens,
    beside transformers' forward with labels (the loss) on the same T;
  * tokenizer: MB/s of encoding tinyshakespeare, pg_llm (the same code as the
    server, single-threaded) and tiktoken (single-threaded), and llm_encode in
    SQL (including the transfer of the text).
"""
import argparse
import os
import statistics
import sys
import time

# the installed pg_llm_cy first; the source tree when it is not installed
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import psycopg  # noqa: E402

from pg_llm_cy import kernels as K  # noqa: E402
from pg_llm_cy.cluster import open_server  # noqa: E402

MODEL = "bench-gpt2-small"
PROMPT_IDS = [464, 3290, 286, 262, 1266, 318, 257, 3049, 7586, 286, 1692, 326, 262, 13230, 11, 290]


def prepare_model(conn, data):
    if not conn.execute("SELECT has_weights FROM llm_models WHERE model = %s", (MODEL,)).fetchone():
        conn.execute("SELECT llm_create_model(%s, 12, 12, 768, 1024, 50257, 1)", (MODEL,))
    conn.execute("SELECT pg_llm_load_bpe_vocab_text(%s, %s)",
                 (open(os.path.join(data, "gpt2", "vocab.json"), encoding="utf-8").read(), MODEL))
    conn.execute("SELECT pg_llm_load_bpe_merges_text(%s, %s)",
                 (open(os.path.join(data, "gpt2", "merges.txt"), encoding="utf-8").read(), MODEL))
    # as after any import: sets the hint bits of the new rows, so that the
    # first reader does not have to (and write the pages back)
    conn.execute("VACUUM llm_param")


def hf_model(conn):
    import torch
    import transformers
    m = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()
    sd = {}
    for name, shape, data in conn.execute("SELECT name, shape, data FROM llm_param WHERE model = %s",
                                          (MODEL,)):
        a = np.frombuffer(data, np.float32).reshape(shape)
        if name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
            a = a.T
        sd[name] = torch.tensor(np.ascontiguousarray(a))
    m.transformer.load_state_dict(sd, strict=False)
    m.tie_weights()
    return m


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pg-config", default=os.environ.get("PG_CONFIG", ".pg/pg16/bin/pg_config"))
    ap.add_argument("--dsn")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default=os.environ.get("PG_LLM_TEST_DATA", "../shared/data"))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--lengths", default="64,256,512,1024", help="T of the long-prompt table")
    args = ap.parse_args()

    dsn, conn, cluster = open_server(args.dsn, args.pg_config)
    try:
        prepare_model(conn, args.data)
        text_prompt = conn.execute("SELECT llm_decode(%s, %s)", (PROMPT_IDS, MODEL)).fetchone()[0]
        assert conn.execute("SELECT llm_encode(%s, %s)", (text_prompt, MODEL)).fetchone()[0] == PROMPT_IDS
        conn.execute(f"SET pg_llm.num_threads = {args.threads}")
        K.set_num_threads(args.threads)
        print(f"threads {args.threads}; {conn.execute('select pg_llm_info()').fetchone()[0]}")

        # first call: a fresh backend with a cold cache (the first one after the
        # model was written also pays for reading its pages into memory: not counted)
        firsts = []
        for i in range(args.reps + 1):
            c = psycopg.connect(dsn, autocommit=True)
            c.execute(f"SET pg_llm.num_threads = {args.threads}")
            t = time.perf_counter()
            c.execute("SELECT llm_generate(%s, 1, 0, 50, 1.0, %s)", (text_prompt, MODEL))
            if i > 0:
                firsts.append(time.perf_counter() - t)
            c.close()

        gen = ("SELECT llm_generate(%s, 64, 0, 50, 1.0, %s, eos_token => -1)")
        conn.execute(gen, (text_prompt, MODEL))          # warm
        ours = []
        for _ in range(args.reps):
            t = time.perf_counter()
            conn.execute(gen, (text_prompt, MODEL))
            ours.append(64 / (time.perf_counter() - t))

        one = "SELECT llm_generate(%s, 1, 0, 50, 1.0, %s)"
        conn.execute(one, (text_prompt, MODEL))
        ttft = min(_timed(lambda: conn.execute(one, (text_prompt, MODEL)).fetchone()) for _ in range(args.reps))
        lengths = [int(x) for x in args.lengths.split(",")]
        rng = np.random.default_rng(0)
        losses = {}
        for T in lengths:
            toks = rng.integers(0, 50257, T + 1).tolist()
            q = ("SELECT llm_loss(%s, %s, %s)", (MODEL, toks[:-1], toks[1:]))
            conn.execute(*q)
            losses[T] = T / min(_timed(lambda: conn.execute(*q).fetchone()) for _ in range(max(2, args.reps // 2)))

        bw = K.memory_read_bandwidth()
        ceiling = bw / 0.4978

        try:
            import torch
            torch.set_num_threads(args.threads)
            model = hf_model(conn)
            ids = torch.tensor([PROMPT_IDS])
            with torch.no_grad():
                model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=50256)
                theirs = []
                for _ in range(args.reps):
                    t = time.perf_counter()
                    model.generate(ids, max_new_tokens=64, min_new_tokens=64, do_sample=False,
                                   use_cache=True, pad_token_id=50256)
                    theirs.append(64 / (time.perf_counter() - t))
                model(ids)
                ttft_theirs = min(_timed(lambda: model(ids)) for _ in range(args.reps))
                hf_losses = {}
                for T in lengths:
                    x = torch.tensor([rng.integers(0, 50257, T).tolist()])
                    model(x, labels=x)
                    hf_losses[T] = T / min(_timed(lambda: model(x, labels=x)) for _ in range(max(2, args.reps // 2)))
        except ImportError:
            theirs = None

        print("decode (gpt2-small shape, 16-token prompt, 64 greedy tokens, batch 1):")
        print(f"  pg_llm llm_generate   {max(ours):7.1f} tokens/s  (runs: {', '.join(f'{x:.1f}' for x in ours)})")
        if theirs:
            print(f"  transformers generate {max(theirs):7.1f} tokens/s  (runs: {', '.join(f'{x:.1f}' for x in theirs)})")
            print(f"  ratio                 {max(ours) / max(theirs):7.2f}x")
        print(f"  memory read {bw:.1f} GB/s -> ceiling {ceiling:.0f} tokens/s; pg_llm reaches "
              f"{100 * max(ours) / ceiling:.0f}% of it")
        print(f"first call, fresh backend, cold cache: {min(firsts):.3f} s "
              f"(median {statistics.median(firsts):.3f} s)")
        line = f"time to the first token, 16-token prompt, warm connection: pg_llm {ttft * 1e3:.1f} ms"
        if theirs:
            line += f", transformers forward {ttft_theirs * 1e3:.1f} ms"
        print(line)
        print("long prompts: llm_loss tokens/s beside transformers' forward with labels")
        print("     T    pg_llm  transformers  ratio")
        for T in lengths:
            if theirs:
                print(f"  {T:4d}  {losses[T]:8.0f}  {hf_losses[T]:12.0f}  {losses[T] / hf_losses[T]:5.2f}x")
            else:
                print(f"  {T:4d}  {losses[T]:8.0f}")

        # tokenizer
        with open(os.path.join(args.data, "tinyshakespeare.txt"), encoding="utf-8") as f:
            text = f.read()
        mb = len(text.encode()) / 1e6
        tok = K.Tokenizer.from_files(os.path.join(args.data, "gpt2", "vocab.json"),
                                     os.path.join(args.data, "gpt2", "merges.txt"))

        def best(fn):
            fn()
            return min(_timed(fn) for _ in range(args.reps))

        t_ours = best(lambda: tok.encode(text))
        t_sql = best(lambda: conn.execute("SELECT llm_encode(%s, %s)", (text, MODEL)).fetchone())
        line = f"tokenizer on tinyshakespeare ({mb:.2f} MB): pg_llm {mb / t_ours:.1f} MB/s"
        try:
            import tiktoken
            from tiktoken.load import data_gym_to_mergeable_bpe_ranks
            ranks = data_gym_to_mergeable_bpe_ranks(
                vocab_bpe_file=os.path.join(args.data, "gpt2", "merges.txt"),
                encoder_json_file=os.path.join(args.data, "gpt2", "vocab.json"))
            enc = tiktoken.Encoding("gpt2", mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256},
                                    pat_str=r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s""")
            t_tik = best(lambda: enc.encode_ordinary(text))
            line += f", tiktoken {mb / t_tik:.1f} MB/s, ratio {t_tik / t_ours:.2f}x"
        except ImportError:
            pass
        print(line + f"; llm_encode in SQL {mb / t_sql:.1f} MB/s")
    finally:
        conn.close()
        if cluster is not None:
            cluster.destroy()


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
