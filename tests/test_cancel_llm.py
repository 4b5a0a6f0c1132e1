"""Cancellation of the model-level functions on a gpt2-small-sized model:
import, export, creating a model, a checkpoint, encoding a huge text,
generation, streaming, beam search, perplexity and a training step stop
within 1 second of pg_cancel_backend or of statement_timeout, leave nothing
half-done (no model, checkpoint or file), and the session works afterwards.
(The training procedure: test_train.py.)"""
import os
import time

import psycopg
import pytest

from helpers import Runner, assert_usable, create_model, load_tokenizer, sql_value, wait_in_kernel

MODEL = "cancel_gpt2"
LATENCIES = {}

# name -> (statement, what must hold afterwards)
LONG = {
    "import": "SELECT pg_llm_import_npz('{path}', 'cancel_imp')",
    "export": "SELECT pg_llm_export_npz('{path}.out.safetensors', 'cancel_gpt2')",
    "create_model": "SELECT llm_create_model('cancel_new', 12, 12, 768, 1024, 50257, 7)",
    "checkpoint_save": "SELECT llm_checkpoint_save('cancel_gpt2', 'cancelled')",
    "encode": "SELECT cardinality(llm_encode(t, 'cancel_gpt2')) FROM cancel_text",
    "generate": "SELECT llm_generate('Once upon a time', 900, 0.8, 50, 0.95, 'cancel_gpt2', -1, 1)",
    "stream": "SELECT count(*) FROM llm_generate_stream('Once upon a time', 900, model => 'cancel_gpt2', "
              "eos_token => -1)",
    "beam_search": "SELECT count(*) FROM llm_beam_search('Once upon a time', 4, 600, 'cancel_gpt2', 1.0, -1)",
    "perplexity": "SELECT llm_perplexity(left(t, 400000), 'cancel_gpt2') FROM cancel_text",
    "train_step": "SELECT llm_train_step('cancel_gpt2', (SELECT array_agg(ARRAY(SELECT (i * 7 + j) % 50257 "
                  "FROM generate_series(1, 512) j)) FROM generate_series(1, 6) i), "
                  "(SELECT array_agg(ARRAY(SELECT (i * 7 + j + 1) % 50257 FROM generate_series(1, 512) j)) "
                  "FROM generate_series(1, 6) i))",
}


@pytest.fixture(scope="module")
def model(conn, data_dir, server_dir):
    create_model(conn, MODEL, n_layer=12, n_head=12, n_embd=768, n_positions=1024, vocab=50257, seed=5)
    load_tokenizer(conn, MODEL, data_dir)
    path = os.path.join(server_dir, "cancel_gpt2.npz")
    conn.execute("SELECT pg_llm_export_npz(%s, %s)", (path, MODEL))
    conn.execute("DROP TABLE IF EXISTS cancel_text")
    # 99 MB of hex words: unlike a repeated sentence, the tokenizer's piece
    # cache does not make them cheap
    conn.execute("CREATE TABLE cancel_text AS SELECT string_agg(md5(i::text), ' ') AS t "
                 "FROM generate_series(1, 3000000) i")
    yield path
    print("\ncancel latencies (s): " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(LATENCIES.items())))
    conn.execute("DROP TABLE cancel_text")
    for m in (MODEL, "cancel_imp", "cancel_new"):
        conn.execute("SELECT llm_drop_model(model) FROM llm_model_config WHERE model = %s", (m,))
    os.unlink(path)


def state(conn, path):
    """What a cancelled call must not have changed."""
    files = sorted(f for f in os.listdir(os.path.dirname(path)) if f.startswith("cancel_gpt2.npz.out"))
    return (conn.execute("SELECT version, train_step FROM llm_model_config WHERE model = %s", (MODEL,)).fetchone(),
            sql_value(conn, "SELECT count(*) FROM llm_model_config WHERE model IN ('cancel_imp', 'cancel_new')"),
            sql_value(conn, "SELECT count(*) FROM llm_checkpoint WHERE model = %s", (MODEL,)),
            files)


@pytest.mark.parametrize("what", list(LONG))
@pytest.mark.parametrize("how", ["cancel", "statement_timeout"])
def test_cancel(conn, pg_dsn, model, what, how):
    sql = LONG[what].replace("{path}", model)
    before = state(conn, model)
    setup = ["SET pg_llm.num_threads = 2"]
    # the timeout strikes well inside the shortest of these calls (an export
    # of gpt2-small's 500 MB takes about 1.5 s): one that ended first would
    # have done its work, not left it half-done
    timeout = 0.8
    if how == "statement_timeout":
        setup.append(f"SET statement_timeout = '{int(timeout * 1000)}ms'")
    r = Runner(pg_dsn, sql, setup)
    t0 = time.perf_counter()
    r.start()
    if how == "cancel":
        wait_in_kernel(conn, r.pid, settle=1.2)
        t0 = time.perf_counter()
        assert conn.execute("SELECT pg_cancel_backend(%s)", (r.pid,)).fetchone()[0]
    else:
        t0 += timeout
    r.join(60)
    assert isinstance(r.error, psycopg.errors.QueryCanceled), f"{what}: {r.error or r.result}"
    latency = r.ended - t0
    LATENCIES[f"{what}/{how}"] = latency
    assert latency < 1.0, f"{what} stopped {latency:.3f} s after the {how}"
    assert state(conn, model) == before, f"{what} left something behind when cancelled"
    r.conn.execute("RESET statement_timeout")
    assert_usable(r.conn)
    assert len(sql_value(r.conn, "SELECT llm_generate('Hi', 2, 0, 50, 1.0, %s, -1)", (MODEL,))) > 0
    r.conn.close()
