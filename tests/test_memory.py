"""Memory bounds: a request whose buffers (activations, logits, KV caches,
training state, data) would go past pg_llm.max_memory_mb, or a model larger
than pg_llm.model_cache_mb, fails with a clear ERROR (54000) before any
memory is taken; the counts come back after each call; a finished training
run leaves nothing behind."""
import psycopg
import pytest

from helpers import assert_sql_error, create_model, load_tokenizer, server_setting, sql_value

MB = "pg_llm.max_memory_mb"


@pytest.fixture(scope="module")
def mem(conn, data_dir, pg_dsn):
    # a model whose full-context KV cache is 4 layers x 2 x 1024 x 512 x 4 B = 16 MB
    create_model(conn, "mem", n_layer=4, n_head=8, n_embd=512, n_positions=1024, vocab=50257)
    load_tokenizer(conn, "mem", data_dir)
    # for training: 13 M parameters, state 4 x 52 MB
    create_model(conn, "mem_train", n_layer=4, n_head=8, n_embd=512, n_positions=1024, vocab=1000)
    conn.execute("DELETE FROM llm_dataset WHERE dataset = 'mem'")
    conn.execute("INSERT INTO llm_dataset (dataset, tokens, target) SELECT 'mem', array_fill(i, ARRAY[64]), "
                 "array_fill(i + 1, ARRAY[64]) FROM generate_series(1, 8) i")
    with psycopg.connect(pg_dsn, autocommit=True) as c:
        yield c
    conn.execute("DELETE FROM llm_dataset WHERE dataset = 'mem'")
    conn.execute("SELECT llm_drop_model('mem')")
    conn.execute("SELECT llm_drop_model('mem_train')")


def working_mb(c):
    return sql_value(c, "SELECT working_mb FROM pg_llm_backend_stats()")


def limited(c, mb, sql, params, fragment=MB, then_run=True):
    before = working_mb(c)
    c.execute(f"SET {MB} = {mb}")
    try:
        assert_sql_error(c, sql, params, "54000", fragment)
        assert working_mb(c) == before, "a refused request left memory counted"
    finally:
        c.execute(f"RESET {MB}")
    if then_run:
        c.execute(sql, params)      # and with the default limit it works


def test_logits_activations(mem):
    # (1000, 50257) float32 logits alone are 192 MB
    limited(mem, 100, "SELECT length(llm_logits(array_fill(1, ARRAY[1000]), 'mem'))", ())


def test_generation_kv_cache(mem):
    # KV cache: 4 layers x 2 x (prompt + 200) x 512 x 4 B = 3.3 MB
    limited(mem, 2, "SELECT llm_generate('Hello', 200, 0, 50, 1.0, 'mem', -1)", ())
    limited(mem, 2, "SELECT count(*) FROM llm_generate_stream('Hello', 200, model => 'mem', eos_token => -1)",
            (), then_run=False)


def test_beam_search_kv_caches(mem):
    # 8 beams, each with its KV cache (twice: the copy for reordering)
    limited(mem, 20, "SELECT count(*) FROM llm_beam_search('Hello', 8, 200, 'mem', 1.0, -1)", (), then_run=False)


def test_training_state(mem):
    # parameters, gradients and AdamW moments: 4 x 52 MB
    limited(mem, 150, "SELECT llm_train('mem_train', 1, batch_size => 2, dataset => 'mem')", (), fragment=MB)
    limited(mem, 150, "SELECT llm_train_step('mem_train', '{1,2,3}', '{2,3,4}')", (), fragment=MB)


def test_training_activations(mem):
    # the state fits in 400 MB, the activations of 8 x 1024 tokens do not
    mem.execute("INSERT INTO llm_dataset (dataset, tokens, target) SELECT 'mem', array_fill(i, ARRAY[1024]), "
                "array_fill(i + 1, ARRAY[1024]) FROM generate_series(1, 8) i")
    try:
        mem.execute(f"SET {MB} = 400")
        mem.execute("DELETE FROM llm_dataset WHERE dataset = 'mem_big'")
        mem.execute("INSERT INTO llm_dataset (dataset, tokens, target) SELECT 'mem_big', tokens, target "
                    "FROM llm_dataset WHERE dataset = 'mem' AND cardinality(tokens) = 1024")
        assert_sql_error(mem, "SELECT llm_train('mem_train', 1, batch_size => 8, dataset => 'mem_big')", (),
                         "54000", "activations")
    finally:
        mem.execute(f"RESET {MB}")
        mem.execute("DELETE FROM llm_dataset WHERE dataset IN ('mem_big') OR "
                    "(dataset = 'mem' AND cardinality(tokens) = 1024)")


def test_gradients(mem):
    limited(mem, 100, "SELECT count(*) FROM llm_gradients('mem', array_fill(1, ARRAY[512]), "
                      "array_fill(2, ARRAY[512]))", ())


def test_model_cache(pg_dsn, conn, mem):
    create_model(conn, "mem_cache", n_layer=1, n_head=2, n_embd=256, n_positions=64)   # 53 MB
    try:
        with server_setting(pg_dsn, "pg_llm.model_cache_mb", 50):
            with psycopg.connect(pg_dsn, autocommit=True) as c:
                assert_sql_error(c, "SELECT llm_logits('{1}', 'mem_cache')", (), "54000",
                                 "more than pg_llm.model_cache_mb (50 MB)")
                assert sql_value(c, "SELECT cache_mb + shared_mb FROM pg_llm_backend_stats()") == 0
        with psycopg.connect(pg_dsn, autocommit=True) as c:
            assert len(sql_value(c, "SELECT llm_logits('{1}', 'mem_cache')")) == 4 * 50257
            # the weights are mapped from the shared cache, not copied
            assert sql_value(c, "SELECT cache_mb FROM pg_llm_backend_stats()") == 0
            assert sql_value(c, "SELECT shared_mb FROM pg_llm_backend_stats()") > 50
    finally:
        conn.execute("SELECT llm_drop_model('mem_cache')")


def test_counts_come_back(pg_dsn, mem):
    mem.close()
    mem = psycopg.connect(pg_dsn, autocommit=True)
    for _ in range(3):
        mem.execute("SELECT llm_generate('Hello', 20, 0.8, 50, 0.95, 'mem', -1, 1)")
        mem.execute("SELECT count(*) FROM llm_beam_search('Hello', 3, 10, 'mem', 1.0, -1)")
        mem.execute("SELECT length(llm_logits(array_fill(1, ARRAY[100]), 'mem'))")
        assert working_mb(mem) == 0
    # a run's state goes when the run ends; llm_train_step keeps it for the next step
    mem.execute("SELECT llm_train('mem_train', 2, batch_size => 2, block_size => 32, dataset => 'mem')")
    assert working_mb(mem) == 0
    mem.execute("SELECT llm_train_step('mem_train', '{1,2,3}', '{2,3,4}')")
    params_mb = sql_value(mem, "SELECT bytes / 1048576.0::float8 FROM llm_models WHERE model = 'mem_train'")
    assert 4 * params_mb <= working_mb(mem) < 4 * params_mb + 50
    private, mapped = mem.execute("SELECT cache_mb, shared_mb FROM pg_llm_backend_stats()").fetchone()
    mem_mb = sql_value(mem, "SELECT bytes / 1048576.0::float8 FROM llm_models WHERE model = 'mem'")
    assert private == 0 and abs(mapped - mem_mb) < 5   # the generation model, from the shared cache
    mem.close()


def test_a_run_that_cannot_start_keeps_no_state(pg_dsn, mem):
    """A failed start (empty dataset, bad block size, ...) frees the training
    state it allocated (4 x the parameters) instead of keeping it around."""
    c = psycopg.connect(pg_dsn, autocommit=True)
    try:
        assert working_mb(c) == 0
        assert_sql_error(c, "SELECT llm_train('mem_train', 2, dataset => 'no-such-data')", (),
                         "42704", "does not exist")
        assert working_mb(c) == 0
        assert_sql_error(c, "SELECT llm_train('mem_train', 2, block_size => 2048, dataset => 'mem')",
                         (), "22023", "exceeds the model's context")
        assert working_mb(c) == 0
        c.execute("SELECT llm_train('mem_train', 1, batch_size => 2, block_size => 32, dataset => 'mem')")
        assert working_mb(c) == 0
    finally:
        c.close()
