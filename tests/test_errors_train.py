"""Bad input to training: llm_train / llm_train_run, llm_train_step,
llm_gradients, llm_evaluate, llm_dataset_from_text and checkpoints give a
clear ERROR with a precise SQLSTATE, and leave the model as it was."""
import psycopg
import pytest

from helpers import assert_sql_error, create_model, load_tokenizer, sql_value

V = 50


@pytest.fixture(scope="module", autouse=True)
def model(conn):
    create_model(conn, "err_train", n_layer=1, n_head=2, n_embd=16, n_positions=32, vocab=V)
    conn.execute("DELETE FROM llm_dataset WHERE dataset LIKE 'err%%'")
    conn.execute("INSERT INTO llm_dataset (dataset, tokens, target, split) "
                 "SELECT 'err', array_fill(i % 50, ARRAY[24]), array_fill((i + 1) % 50, ARRAY[24]), "
                 "CASE WHEN i < 6 THEN 'train' ELSE 'val' END FROM generate_series(0, 7) i")
    yield
    conn.execute("DELETE FROM llm_dataset WHERE dataset LIKE 'err%%'")
    conn.execute("SELECT llm_drop_model('err_train')")


def train(**hp):
    hp.setdefault("batch_size", 2)
    args = "".join(f", {k} => %({k})s" for k in hp)
    return f"SELECT llm_train('err_train', 2, dataset => 'err'{args})", hp


def assert_unchanged(conn):
    assert sql_value(conn, "SELECT train_step FROM llm_model_config WHERE model = 'err_train'") == 0


def test_valid_run(conn):
    assert sql_value(conn, "SELECT llm_train('err_train', 0, batch_size => 2, dataset => 'err')") is None
    assert_unchanged(conn)


@pytest.mark.parametrize("hp,expect", [
    (dict(learning_rate=0.0), "learning_rate must be positive"),
    (dict(learning_rate=-1e-3), "learning_rate must be positive"),
    (dict(learning_rate=float("nan")), "learning_rate must be positive"),
    (dict(learning_rate=float("inf")), "learning_rate must be positive"),
    (dict(min_lr=1.0), "min_lr must lie in [0, learning_rate]"),
    (dict(batch_size=0), "batch_size must be positive"),
    (dict(warmup_iters=-1), "warmup_iters must not be negative"),
    (dict(weight_decay=-0.1), "weight_decay must not be negative"),
    (dict(beta1=1.0), "beta1 must lie in [0, 1)"),
    (dict(beta2=-0.1), "beta2 must lie in [0, 1)"),
    (dict(eps=0.0), "eps must be positive"),
    (dict(grad_clip=-1.0), "grad_clip must not be negative"),
    (dict(gradient_accumulation_steps=0), "gradient_accumulation_steps must lie in [1, 65536]"),
    (dict(gradient_accumulation_steps=65537), "gradient_accumulation_steps must lie in [1, 65536]"),
    (dict(dropout=1.0), "dropout must lie in [0, 1)"),
    (dict(eval_interval=-1), "eval_interval must not be negative"),
    (dict(eval_iters=0), "eval_iters must be positive"),
    (dict(max_seconds=0.0), "max_seconds must be a positive number"),
    (dict(log_interval=0), "log_interval must be positive"),
    (dict(block_size=0), "block_size must be positive"),
])
def test_hyper_parameters(conn, hp, expect):
    assert_sql_error(conn, *train(**hp), "22023", expect)
    assert_unchanged(conn)


def test_negative_steps(conn):
    assert_sql_error(conn, "SELECT llm_train('err_train', -1, dataset => 'err')", (), "22023",
                     "n_steps must not be negative")


def test_block_size_above_context(conn):
    assert_sql_error(conn, *train(block_size=33), "22023", "block_size 33 exceeds the model's context of 32")


def test_block_size_above_rows(conn):
    assert_sql_error(conn, *train(block_size=25), "22023", "exceeds the dataset's rows of 24 tokens")


def test_batch_larger_than_data(conn):
    assert_sql_error(conn, *train(batch_size=7), "22023", "batch_size 7 exceeds the 6 training rows")


def test_empty_dataset(conn):
    assert_sql_error(conn, "SELECT llm_train('err_train', 2, dataset => 'err_none')", (), "42704",
                     'training: dataset "err_none" does not exist')
    assert_sql_error(conn, "CALL llm_train_run('err_train', 2, dataset => 'err_none')", (), "42704",
                     'dataset "err_none" does not exist')
    # the error lists the datasets there are
    with pytest.raises(psycopg.errors.UndefinedObject) as e:
        conn.execute("SELECT llm_train('err_train', 2, dataset => 'err_none')")
    assert "The datasets: " in e.value.diag.message_detail and "err (" in e.value.diag.message_detail
    # a dataset of val rows only has no training rows
    conn.execute("INSERT INTO llm_dataset (dataset, tokens, target, split) "
                 "VALUES ('err_valonly', '{1,2}', '{2,3}', 'val')")
    try:
        assert_sql_error(conn, "SELECT llm_train('err_train', 2, dataset => 'err_valonly')", (), "55000",
                         'dataset "err_valonly" has no training rows')
    finally:
        conn.execute("DELETE FROM llm_dataset WHERE dataset = 'err_valonly'")


def test_dataset_picked_when_none_is_named(conn):
    """No dataset named: "default" if it exists, else the only dataset there
    is, else an error that lists them."""
    conn.execute("BEGIN")
    try:
        conn.execute("DELETE FROM llm_dataset")
        conn.execute("SAVEPOINT s")
        assert_sql_error(conn, "SELECT llm_train('err_train', 1)", (), "42704", "llm_dataset holds no data")
        conn.execute("ROLLBACK TO s")
        conn.execute("INSERT INTO llm_dataset (dataset, tokens, target) SELECT 'only', "
                     "array_fill(i, ARRAY[8]), array_fill(i + 1, ARRAY[8]) FROM generate_series(1, 4) i")
        assert sql_value(conn, "SELECT llm_train('err_train', 1, batch_size => 2, eval_interval => 0)") > 0
        assert sql_value(conn, "SELECT loss FROM llm_evaluate('err_train', 'train')") > 0
        conn.execute("INSERT INTO llm_dataset (dataset, tokens, target) VALUES ('other', '{1}', '{2}')")
        conn.execute("SAVEPOINT s")
        with pytest.raises(psycopg.errors.UndefinedObject) as e:
            conn.execute("SELECT llm_train('err_train', 1, batch_size => 2)")
        conn.execute("ROLLBACK TO s")
        assert "name the dataset" in e.value.diag.message_primary
        assert e.value.diag.message_detail == "The datasets: only (4 train, 0 val rows), other (1 train, 0 val rows)."
        assert "dataset => '...'" in e.value.diag.message_hint
    finally:
        conn.execute("ROLLBACK")


def test_ragged_or_foreign_rows(conn):
    conn.execute("INSERT INTO llm_dataset (dataset, tokens, target) VALUES "
                 "('err_ragged', '{1,2,3}', '{2,3,4}'), ('err_ragged', '{1,2}', '{2,3}')")
    assert_sql_error(conn, "SELECT llm_train('err_train', 1, batch_size => 1, dataset => 'err_ragged')", (),
                     "22000", "differ in length")
    conn.execute("INSERT INTO llm_dataset (dataset, tokens, target) VALUES ('err_vocab', '{1,2,3}', '{2,3,50}')")
    assert_sql_error(conn, "SELECT llm_train('err_train', 1, batch_size => 1, dataset => 'err_vocab')", (),
                     "22003", "50")
    assert_unchanged(conn)


def test_dataset_rows_must_match(conn):
    """The table itself refuses an empty row and tokens without their targets."""
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("INSERT INTO llm_dataset (dataset, tokens, target) VALUES ('err_x', '{}', '{}')")
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("INSERT INTO llm_dataset (dataset, tokens, target) VALUES ('err_x', '{1,2}', '{1}')")
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("INSERT INTO llm_dataset (dataset, tokens, target, split) VALUES ('err_x', '{1}', '{1}', 'test')")


def test_unknown_model_and_model_without_weights(conn):
    assert_sql_error(conn, "SELECT llm_train('no_such_model', 1, dataset => 'err')", (), "42704",
                     'model "no_such_model" does not exist')
    conn.execute("INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab) "
                 "VALUES ('err_noweights', 1, 2, 16, 32, 50) ON CONFLICT DO NOTHING")
    assert_sql_error(conn, "SELECT llm_train('err_noweights', 1, batch_size => 2, dataset => 'err')", (),
                     "55000", 'model "err_noweights" has no parameters')
    assert_sql_error(conn, "SELECT llm_train_step('no_such_model', '{1,2}', '{2,3}')", (), "42704",
                     "does not exist")


def test_training_memory_bound(conn):
    conn.execute("SET pg_llm.max_memory_mb = 1")
    try:
        # 4 x parameters (weights, gradients, m, v) of gpt2-small do not fit in 1 MB
        create_model(conn, "err_big", n_layer=1, n_head=2, n_embd=64, n_positions=32, vocab=5000)
    except psycopg.Error:
        pass
    conn.execute("RESET pg_llm.max_memory_mb")
    if not sql_value(conn, "SELECT count(*) FROM llm_param WHERE model = 'err_big'"):
        create_model(conn, "err_big", n_layer=1, n_head=2, n_embd=64, n_positions=32, vocab=5000)
    conn.execute("SET pg_llm.max_memory_mb = 2")
    try:
        assert_sql_error(conn, "SELECT llm_train('err_big', 1, dataset => 'err')", (), "54000",
                         "more than pg_llm.max_memory_mb")
    finally:
        conn.execute("RESET pg_llm.max_memory_mb")
        conn.execute("SELECT llm_drop_model('err_big')")


def test_procedure_arguments_and_transaction_block(conn, pg_dsn):
    assert_sql_error(conn, "CALL llm_train_run('err_train', 1, batch_size => 2, checkpoint_interval => 0, dataset => 'err')",
                     (), "22023", "checkpoint_interval must be positive")
    with psycopg.connect(pg_dsn) as c:          # not autocommit: inside a transaction block
        with pytest.raises(psycopg.errors.InvalidTransactionTermination):
            c.execute("CALL llm_train_run('err_train', 1, batch_size => 2, dataset => 'err')")
    assert_unchanged(conn)


def test_steps_without_a_run(pg_dsn):
    with psycopg.connect(pg_dsn, autocommit=True) as c:
        assert_sql_error(c, "SELECT pg_llm_train_tick('err_train')", (), "55000",
                         'no training run of model "err_train" in this session')


def test_pg_gpt2_form_checks_shape(conn):
    assert_sql_error(conn, "SELECT llm_train('err_train', 1, 2, 2, 16, 50)", (), "22023",
                     'model "err_train" has n_layer 1, n_head 2, n_embd 16, vocab 50, not 2, 2, 16, 50')
    assert_sql_error(conn, "SELECT llm_train('no_such_model', 1, 1, 2, 16, 50)", (), "42704",
                     "does not exist")


# ---------------------------------------------------------------------------
# llm_train_step, llm_gradients
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("fn", ["llm_train_step", "llm_gradients"])
def test_batch_arguments(conn, fn):
    q = f"SELECT * FROM {fn}('err_train', %s::int[], %s::int[])"
    assert_sql_error(conn, q, ([1, 2, 3], [1, 2]), "22000", "differ in shape")
    assert_sql_error(conn, q, ([[1, 2], [3, 4]], [1, 2, 3, 4]), "22000", "differ in shape")
    assert_sql_error(conn, q, ([], []), "22023", "is empty")
    assert_sql_error(conn, q, (list(range(33)), list(range(33))), "54000", "exceed the model's context of 32")
    assert_sql_error(conn, q, ([1, 2, 50], [1, 2, 3]), "22003", "50")
    assert_sql_error(conn, q, ([1, 2, 3], [1, -1, 3]), "22003", "-1")
    assert_sql_error(conn, q, ([1, None, 3], [1, 2, 3]), "22004", "NULL")
    assert_sql_error(conn, q, (None, [1, 2, 3]), "22004", "tokens must not be NULL")
    assert_unchanged(conn)


@pytest.mark.parametrize("arg,value,expect", [
    ("learning_rate", 0.0, "learning_rate must be positive"),
    ("learning_rate", -1.0, "learning_rate must be positive"),
    ("weight_decay", -1.0, "weight_decay must not be negative"),
    ("beta1", 1.5, "beta1 must lie in [0, 1)"),
    ("beta2", 1.0, "beta2 must lie in [0, 1)"),
    ("eps", 0.0, "eps must be positive"),
    ("grad_clip", -0.5, "grad_clip must not be negative"),
])
def test_train_step_hyper_parameters(conn, arg, value, expect):
    assert_sql_error(conn, f"SELECT llm_train_step('err_train', '{{1,2,3}}', '{{2,3,4}}', {arg} => %s)",
                     (value,), "22023", expect)
    assert_unchanged(conn)


# ---------------------------------------------------------------------------
# llm_evaluate
# ---------------------------------------------------------------------------
def test_evaluate(conn):
    assert_sql_error(conn, "SELECT * FROM llm_evaluate('err_train', 'test', 'err')", (), "22023",
                     "split must be 'train' or 'val'")
    assert_sql_error(conn, "SELECT * FROM llm_evaluate('err_train', 'val', 'err_none')", (), "42704",
                     'llm_evaluate: dataset "err_none" does not exist')
    conn.execute("INSERT INTO llm_dataset (dataset, tokens, target) "
                 "VALUES ('err_long', array_fill(1, ARRAY[40]), array_fill(2, ARRAY[40]))")
    assert_sql_error(conn, "SELECT * FROM llm_evaluate('err_train', 'train', 'err_long')", (), "54000",
                     "rows of 40 tokens exceed the model's context of 32")
    assert_sql_error(conn, "SELECT * FROM llm_evaluate('no_such_model')", (), "42704", "does not exist")


# ---------------------------------------------------------------------------
# llm_dataset_from_text
# ---------------------------------------------------------------------------
def test_dataset_from_text(conn, data_dir):
    q = "SELECT llm_dataset_from_text('err_tok', %s, %s, %s, 'err_text')"
    create_model(conn, "err_tok", n_layer=1, n_head=1, n_embd=8, n_positions=16)
    assert_sql_error(conn, q, ("some text", 4, 0.1), "55000", "tokenizer")
    load_tokenizer(conn, "err_tok", data_dir)
    text = "The quick brown fox jumps over the lazy dog. " * 10
    assert_sql_error(conn, q, (text, 0, 0.1), "22023", "block_size must be positive")
    assert_sql_error(conn, q, (text, 17, 0.1), "22023", "block_size 17 exceeds the model's context of 16")
    assert_sql_error(conn, q, (text, 4, 1.0), "22023", "val_fraction must lie in [0, 1)")
    assert_sql_error(conn, q, (text, 4, -0.1), "22023", "val_fraction must lie in [0, 1)")
    assert_sql_error(conn, q, (text, 4, float("nan")), "22023", "val_fraction must lie in [0, 1)")
    assert_sql_error(conn, q, ("Hello", 4, 0.0), "22023", "make no block of 4")
    assert sql_value(conn, "SELECT count(*) FROM llm_dataset WHERE dataset = 'err_text'") == 0
    assert sql_value(conn, q, (text, 8, 0.0)) == (len(sql_value(conn, "SELECT llm_encode(%s, 'err_tok')",
                                                                (text,))) - 1) // 8
    assert_sql_error(conn, "SELECT llm_dataset_from_text('no_such_model', 'x', 4, 0.1)", (), "42704",
                     "does not exist")
    conn.execute("SELECT llm_drop_model('err_tok')")


# ---------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------
def test_checkpoints(conn):
    assert_sql_error(conn, "SELECT llm_checkpoint_save('gpt2-xl', 'no weights')", (), "55000",
                     'model "gpt2-xl" has no parameters to save')
    assert_sql_error(conn, "SELECT llm_checkpoint_load('err_train', 987654)", (), "42704",
                     "checkpoint 987654 does not exist")
    assert_sql_error(conn, "SELECT llm_checkpoint_save('err_train', 'x', '/nonexistent/dir/x.npz')", (),
                     "58P01", "/nonexistent/dir")
    # the failed export left no checkpoint behind
    assert sql_value(conn, "SELECT count(*) FROM llm_checkpoint WHERE model = 'err_train'") == 0


def test_diverging_step_writes_nothing(conn):
    before = conn.execute("SELECT name, data FROM llm_param WHERE model = 'err_train' ORDER BY name").fetchall()
    # 1e300 is a positive double but infinite as float32: the update makes the weights infinite
    assert_sql_error(conn, "SELECT llm_train_step('err_train', '{1,2,3}', '{2,3,4}', 1e300)", (), "22P01",
                     "the parameters are not finite after step 1")
    assert_sql_error(conn, "SELECT llm_train('err_train', 3, batch_size => 2, learning_rate => 1e300, "
                           "warmup_iters => 0, dataset => 'err')", (), "22P01", "not finite")
    assert conn.execute("SELECT name, data FROM llm_param WHERE model = 'err_train' ORDER BY name").fetchall() == before
    assert_unchanged(conn)
    # and the session trains normally afterwards, from the stored model
    conn.execute("SELECT llm_train_step('err_train', '{1,2,3}', '{2,3,4}')")
    assert sql_value(conn, "SELECT train_step FROM llm_model_config WHERE model = 'err_train'") == 1
    conn.execute("UPDATE llm_model_config SET train_step = 0 WHERE model = 'err_train'")
