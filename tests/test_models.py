"""Models: the registry, GPT-2's initialisation, dropping, the per-backend
cache (hits, reloads when another session changes a model, its bound), and
bad input to llm_logits / llm_loss."""
import numpy as np
import psycopg
import pytest

from helpers import assert_sql_error, create_model, model_params, server_setting, sql_value
from pg_llm_cy import kernels as K
from pg_llm_cy.gpt2 import GPT2Config, flat_from_table, hf_shape, hf_transposed, num_params, param_names


def test_preregistered_sizes(conn):
    rows = dict((r[0], r[1:]) for r in conn.execute(
        "SELECT model, n_layer, n_head, n_embd, n_positions, vocab FROM llm_model_config "
        "WHERE model LIKE 'gpt2-%'"))
    assert rows["gpt2-small"] == (12, 12, 768, 1024, 50257)
    assert rows["gpt2-medium"] == (24, 16, 1024, 1024, 50257)
    assert rows["gpt2-large"] == (36, 20, 1280, 1024, 50257)
    assert rows["gpt2-xl"] == (48, 25, 1600, 1024, 50257)


def test_one_parameter_table(conn):
    """llm_param's names and shapes (the shim), the Python converters and the
    kernels' buffer sizes all come from the kernels' one table."""
    cfg = GPT2Config(2, 2, 16, 24, 100)
    sizes, total = K.gpt2_param_sizes(2, 2, 16, 24, 100)
    table = K.gpt2_param_table(2, 2, 16, 24, 100)
    assert [t[0] for t in table][:2] == ["wte.weight", "wpe.weight"] and len(table) == len(sizes) == 16
    assert [(2 if per_layer else 1) * rows * cols for _, per_layer, _, rows, cols in table] == sizes
    assert total == num_params(cfg)
    create_model(conn, "table_a", n_layer=2, n_head=2, n_embd=16, n_positions=24, vocab=100)
    rows = conn.execute("SELECT name, shape FROM llm_param WHERE model = 'table_a'").fetchall()
    assert sorted(r[0] for r in rows) == sorted(param_names(cfg))
    for name, shape in rows:
        hf = hf_shape(cfg, name)
        assert tuple(shape) == (hf[::-1] if hf_transposed(name) else hf), name
    assert hf_shape(cfg, "h.1.mlp.c_fc.weight") == (16, 64) and hf_transposed("h.1.mlp.c_fc.weight")
    assert hf_shape(cfg, "h.0.attn.c_attn.bias") == (48,) and not hf_transposed("h.0.attn.c_attn.bias")


def test_create_model_gpt2_init(conn):
    n = create_model(conn, "init_a", n_layer=3, n_head=2, n_embd=32, n_positions=40, vocab=300)
    cfg = GPT2Config(3, 2, 32, 40, 300)
    assert n == num_params(cfg)
    p = model_params(conn, "init_a")
    assert len(p) == 4 + 12 * 3
    assert p["h.0.attn.c_attn.weight"].shape == (96, 32)          # (out, in), like nn.Linear
    assert abs(p["wte.weight"].std() - 0.02) < 0.002
    assert abs(p["h.1.mlp.c_fc.weight"].std() - 0.02) < 0.002
    resid = 0.02 / np.sqrt(2 * 3)
    assert abs(p["h.2.attn.c_proj.weight"].std() - resid) < 0.1 * resid
    assert abs(p["h.0.mlp.c_proj.weight"].std() - resid) < 0.1 * resid
    assert np.all(p["h.1.ln_1.weight"] == 1) and np.all(p["ln_f.bias"] == 0)
    assert np.all(p["h.0.attn.c_attn.bias"] == 0)
    row = conn.execute("SELECT n_params, bytes, has_weights, has_tokenizer FROM llm_models "
                       "WHERE model = 'init_a'").fetchone()
    assert row == (n, 4 * n, True, False)


def test_create_model_seed(conn):
    create_model(conn, "seed_a", seed=5, n_embd=16, vocab=50)
    create_model(conn, "seed_b", seed=5, n_embd=16, vocab=50)
    create_model(conn, "seed_c", seed=6, n_embd=16, vocab=50)
    a, b, c = (model_params(conn, m)["wte.weight"] for m in ("seed_a", "seed_b", "seed_c"))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_create_from_registered_config(conn):
    conn.execute("DELETE FROM llm_model_config WHERE model = 'reg'")
    conn.execute("INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab) "
                 "VALUES ('reg', 1, 1, 8, 16, 20)")
    assert sql_value(conn, "SELECT llm_create_model('reg')") == num_params(GPT2Config(1, 1, 8, 16, 20))


def test_create_errors(conn):
    create_model(conn, "dup", n_embd=16, vocab=50)
    assert_sql_error(conn, "SELECT llm_create_model('dup', 1, 1, 16, 16, 50)", (), "42710",
                     "already exists")
    assert_sql_error(conn, "SELECT llm_create_model('fresh_one', 2)", (), "22004",
                     "n_head is required")
    assert_sql_error(conn, "SELECT llm_create_model('bad', 2, 3, 64, 16, 50)", (), "22023",
                     "must divide n_embd")
    assert_sql_error(conn, "SELECT llm_create_model('bad', 0, 1, 64, 16, 50)", (), "22023",
                     "out of range")
    assert_sql_error(conn, "SELECT llm_create_model(NULL, 1, 1, 8, 8, 8)", (), "22004", "must not be NULL")
    assert conn.execute("SELECT count(*) FROM llm_model_config WHERE model = 'bad'").fetchone()[0] == 0


def test_drop_model(conn):
    create_model(conn, "to_drop", n_embd=16, vocab=50)
    conn.execute("SELECT llm_drop_model('to_drop')")
    assert conn.execute("SELECT count(*) FROM llm_param WHERE model = 'to_drop'").fetchone()[0] == 0
    assert_sql_error(conn, "SELECT llm_drop_model('to_drop')", (), "42704", "does not exist")


def test_logits_match_kernels(conn):
    create_model(conn, "lg", n_layer=2, n_head=2, n_embd=32, n_positions=24, vocab=77, seed=3)
    cfg = GPT2Config(2, 2, 32, 24, 77)
    flat = flat_from_table(cfg, model_params(conn, "lg"))
    toks = np.array([5, 9, 1, 76, 0, 33], np.int32)
    want = K.gpt2_logits(flat, cfg, toks)
    got = np.frombuffer(sql_value(conn, "SELECT llm_logits(%s, 'lg')", (toks.tolist(),)), np.float32)
    np.testing.assert_array_equal(got.reshape(want.shape), want)
    loss = sql_value(conn, "SELECT llm_loss('lg', %s, %s)", (toks[:-1].tolist(), toks[1:].tolist()))
    ref = K.cross_entropy(want[:-1], toks[1:])
    assert loss == pytest.approx(ref, rel=1e-5)


def test_cache_hits_and_reload(pg_dsn, conn):
    create_model(conn, "cached", n_embd=16, vocab=50, seed=1)
    c = psycopg.connect(pg_dsn, autocommit=True)
    stats = "SELECT model_loads, cache_hits FROM pg_llm_backend_stats()"
    c.execute("SELECT llm_logits(array[1,2], 'cached')")
    loads0, hits0 = c.execute(stats).fetchone()
    for _ in range(5):
        c.execute("SELECT llm_logits(array[1,2], 'cached')")
    assert c.execute(stats).fetchone() == (loads0, hits0 + 5)
    before = c.execute("SELECT llm_logits(array[1,2], 'cached')").fetchone()[0]
    # another session replaces the model: the next call reloads it
    conn.execute("SELECT llm_drop_model('cached')")
    create_model(conn, "cached", n_embd=16, vocab=50, seed=2)
    after = c.execute("SELECT llm_logits(array[1,2], 'cached')").fetchone()[0]
    assert after != before
    assert c.execute(stats).fetchone()[0] == loads0 + 1
    rows = c.execute("SELECT model, version FROM pg_llm_cache_stats() WHERE model = 'cached'").fetchall()
    assert len(rows) == 1
    assert rows[0][1] == sql_value(conn, "SELECT version FROM llm_model_config WHERE model = 'cached'")
    c.close()


def test_cache_bound(pg_dsn, conn):
    create_model(conn, "big_one", n_embd=256, vocab=5000, n_layer=1, n_head=4)
    with server_setting(pg_dsn, "pg_llm.model_cache_mb", 1):
        with psycopg.connect(pg_dsn, autocommit=True) as c:
            assert_sql_error(c, "SELECT llm_logits(array[1], 'big_one')", (), "54000",
                             "pg_llm.model_cache_mb")
    with psycopg.connect(pg_dsn, autocommit=True) as c:
        assert c.execute("SELECT length(llm_logits(array[1], 'big_one'))").fetchone()[0] == 4 * 5000


def test_logits_errors(conn):
    create_model(conn, "errm", n_embd=16, vocab=50, n_positions=8)
    assert_sql_error(conn, "SELECT llm_logits(array[1], 'nope')", (), "42704", "does not exist")
    assert_sql_error(conn, "SELECT llm_logits('{}'::int[], 'errm')", (), "22023", "empty")
    assert_sql_error(conn, "SELECT llm_logits(array[1, 50], 'errm')", (), "22003",
                     "token id 50 at position 2")
    assert_sql_error(conn, "SELECT llm_logits(array[-1], 'errm')", (), "22003", "outside the vocabulary")
    assert_sql_error(conn, "SELECT llm_logits(array[1,2,3,4,5,6,7,8,9], 'errm')", (), "54000",
                     "context of 8 positions")
    assert_sql_error(conn, "SELECT llm_logits(array[1, NULL], 'errm')", (), "22004", "NULL")
    assert_sql_error(conn, "SELECT llm_loss('errm', array[1,2], array[1])", (), "22000", "differ in length")
    assert conn.execute("SELECT llm_logits(NULL, 'errm')").fetchone()[0] is None
    # a registered model without parameters
    assert_sql_error(conn, "SELECT llm_logits(array[1], 'gpt2-xl')", (), "55000", "has no parameters")
    conn.execute("SET pg_llm.default_model = 'errm'")
    assert conn.execute("SELECT length(llm_logits(array[1]))").fetchone()[0] == 4 * 50
    conn.execute("RESET pg_llm.default_model")
