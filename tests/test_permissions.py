"""Who may do what, as non-superusers: an ordinary role reads models and
generates; pgllm_admin creates, trains and loads tokenizers it is sent;
server files further need pg_read_server_files / pg_write_server_files; and
no error shows a file's contents."""
import os

import psycopg
import pytest

from helpers import create_model, load_tokenizer, sql_value

SECRET = "SECRET-4711-do-not-show"


@pytest.fixture(scope="module")
def roles(conn, pg_dsn, data_dir, server_dir):
    for r in ("llm_user", "llm_trainer", "llm_filer"):
        conn.execute(f"DROP ROLE IF EXISTS {r}")
        conn.execute(f"CREATE ROLE {r} LOGIN")
    conn.execute("GRANT pgllm_admin TO llm_trainer, llm_filer")
    conn.execute("GRANT pg_read_server_files, pg_write_server_files TO llm_filer")
    create_model(conn, "perm", n_layer=1, n_head=2, n_embd=16, n_positions=32)
    load_tokenizer(conn, "perm", data_dir)
    conn.execute("DELETE FROM llm_dataset WHERE dataset = 'perm'")
    conn.execute("INSERT INTO llm_dataset (dataset, tokens, target) "
                 "SELECT 'perm', array_fill(i, ARRAY[16]), array_fill(i + 1, ARRAY[16]) FROM generate_series(1, 4) i")
    conn.execute("SELECT pg_llm_export_npz(%s, 'perm')", (os.path.join(server_dir, "perm.npz"),))
    with open(os.path.join(server_dir, "secret.txt"), "w") as f:
        f.write(f'{{"{SECRET}": 0, "x": \n' + SECRET * 20 + "\n")
    os.chmod(os.path.join(server_dir, "secret.txt"), 0o644)

    def connect(role):
        return psycopg.connect(pg_dsn, user=role, autocommit=True)
    yield connect
    conn.execute("DELETE FROM llm_dataset WHERE dataset = 'perm'")
    for m in ("perm", "perm_t", "perm_f"):
        conn.execute("SELECT llm_drop_model(model) FROM llm_model_config WHERE model = %s", (m,))
    for r in ("llm_user", "llm_trainer", "llm_filer"):
        conn.execute(f"DROP OWNED BY {r}")
        conn.execute(f"DROP ROLE {r}")


def denied(c, sql, params=(), fragment="permission denied"):
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
        c.execute(sql, params)
    assert fragment in str(e.value), str(e.value)


def test_ordinary_role_generates(roles):
    with roles("llm_user") as c:
        assert not sql_value(c, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        ids = sql_value(c, "SELECT llm_encode('Hello world', 'perm')")
        assert ids == [15496, 995]
        assert sql_value(c, "SELECT llm_decode(%s, 'perm')", (ids,)) == "Hello world"
        assert len(sql_value(c, "SELECT llm_generate('Hello', 5, 0, 50, 1.0, 'perm', -1)")) > 0
        assert c.execute("SELECT count(*) FROM llm_generate_stream('Hello', 3, model => 'perm', "
                         "eos_token => -1)").fetchone()[0] == 3
        assert c.execute("SELECT count(*) FROM llm_beam_search('Hello', 2, 3, 'perm')").fetchone()[0] == 2
        assert sql_value(c, "SELECT llm_perplexity('Hello world', 'perm')") > 1
        assert sql_value(c, "SELECT length(llm_logits('{1,2}', 'perm'))") == 2 * 50257 * 4
        assert sql_value(c, "SELECT llm_loss('perm', '{1,2}', '{2,3}')") > 0
        assert sql_value(c, "SELECT count(*) FROM llm_gradients('perm', '{1,2}', '{2,3}')") > 0
        assert sql_value(c, "SELECT n_params FROM llm_models WHERE model = 'perm'") > 0
        assert sql_value(c, "SELECT pg_llm_tensor_array(pg_llm_add(pg_llm_tensor('{1,2}'), "
                            "pg_llm_tensor('{3,4}')))") == [4.0, 6.0]
        assert sql_value(c, "SELECT count(*) FROM llm_train_log") >= 0
        assert "pg_llm" in sql_value(c, "SELECT pg_llm_info()")
        c.execute("SET pg_llm.num_threads = 1")


@pytest.mark.parametrize("sql", [
    "SELECT llm_create_model('perm_x', 1, 1, 8, 8, 10)",
    "SELECT llm_drop_model('perm')",
    "SELECT pg_llm_import_npz('/tmp/x.npz', 'perm')",
    "SELECT pg_llm_export_npz('/tmp/x.npz', 'perm')",
    "SELECT pg_llm_load_bpe_vocab('/tmp/vocab.json', 'perm')",
    "SELECT pg_llm_load_bpe_merges('/tmp/merges.txt', 'perm')",
    "SELECT pg_llm_load_bpe_vocab_text('{}', 'perm')",
    "SELECT pg_llm_load_bpe_merges_text('', 'perm')",
    "SELECT llm_dataset_from_text('perm', 'some text', 4, 0.1)",
    "SELECT llm_train('perm', 1)",
    "SELECT llm_train('perm', 1, 1, 2, 16, 50257)",
    "CALL llm_train_run('perm', 1)",
    "SELECT llm_train_step('perm', '{1,2}', '{2,3}')",
    "SELECT pg_llm_train_tick('perm')",
    "SELECT llm_checkpoint_save('perm', 'x')",
    "SELECT llm_checkpoint_load('perm', 1)",
])
def test_ordinary_role_may_not_change_models(roles, sql):
    with roles("llm_user") as c:
        denied(c, sql)


@pytest.mark.parametrize("sql", [
    "INSERT INTO llm_param (model, name, shape, data) VALUES ('perm', 'x', '{1}', '\\x00000000')",
    "UPDATE llm_model_config SET n_layer = 2 WHERE model = 'perm'",
    "DELETE FROM llm_vocab WHERE model = 'perm'",
    "SELECT * FROM llm_dataset",
    "SELECT * FROM llm_checkpoint_param",
    "SELECT * FROM llm_evaluate('perm', 'train', 'perm')",     # reads the training data
])
def test_ordinary_role_may_not_touch_tables(roles, sql):
    with roles("llm_user") as c:
        denied(c, sql, fragment="permission denied")


@pytest.mark.parametrize("guc", ["pg_llm.max_memory_mb", "pg_llm.model_cache_mb"])
def test_ordinary_role_may_not_raise_memory_limits(roles, guc):
    with roles("llm_user") as c:
        c.execute("SELECT pg_llm_info()")           # the library is loaded: a plain error
        if guc == "pg_llm.model_cache_mb":     # the shared cache's server-wide bound
            with pytest.raises(psycopg.errors.CantChangeRuntimeParam):
                c.execute(f"SET {guc} = 100000")
        else:
            denied(c, f"SET {guc} = 100000", fragment="permission denied to set parameter")
    with roles("llm_user") as c:
        # set before the library loads: PostgreSQL drops the value when it does
        c.execute(f"SET {guc} = 100000")
        c.execute("SELECT pg_llm_info()")
        assert c.execute(f"SHOW {guc}").fetchone()[0] != "100000MB"
        assert c.execute(f"SHOW {guc}").fetchone()[0] in ("8GB", "2GB")


def test_admin_role_trains_without_file_access(roles, data_dir):
    with roles("llm_trainer") as c:
        assert sql_value(c, "SELECT llm_create_model('perm_t', 1, 2, 16, 32, 50257, 1)") > 0
        with open(os.path.join(data_dir, "gpt2", "vocab.json"), encoding="utf-8") as f:
            c.execute("SELECT pg_llm_load_bpe_vocab_text(%s, 'perm_t')", (f.read(),))
        with open(os.path.join(data_dir, "gpt2", "merges.txt"), encoding="utf-8") as f:
            c.execute("SELECT pg_llm_load_bpe_merges_text(%s, 'perm_t')", (f.read(),))
        assert sql_value(c, "SELECT llm_dataset_from_text('perm_t', %s, 8, 0.2, 'perm_t')",
                         ("The quick brown fox jumps over the lazy dog. " * 20,)) > 0
        c.execute("SELECT llm_train('perm_t', 2, batch_size => 2, dataset => 'perm_t', eval_interval => 1, "
                  "eval_iters => 1)")
        c.execute("CALL llm_train_run('perm_t', 2, batch_size => 2, dataset => 'perm_t')")
        assert sql_value(c, "SELECT train_step FROM llm_model_config WHERE model = 'perm_t'") == 4
        assert sql_value(c, "SELECT loss FROM llm_evaluate('perm_t', 'val', 'perm_t')") > 0
        cid = sql_value(c, "SELECT llm_checkpoint_save('perm_t', 'by the trainer')")
        c.execute("SELECT llm_checkpoint_load('perm_t', %s)", (cid,))
        # server files stay closed to it
        denied(c, "SELECT pg_llm_import_npz('/etc/passwd', 'perm_t')", fragment="read server files")
        denied(c, "SELECT pg_llm_load_bpe_vocab('/etc/passwd', 'perm_t')", fragment="read server files")
        denied(c, "SELECT pg_llm_load_bpe_merges('/etc/passwd', 'perm_t')", fragment="read server files")
        denied(c, "SELECT pg_llm_export_npz('/tmp/perm.npz', 'perm_t')", fragment="write server files")
        denied(c, "SELECT pg_llm_export_npz('/tmp/perm.txt', 'perm_t')", fragment="write server files")
        denied(c, "SELECT llm_checkpoint_save('perm_t', 'x', '/tmp/perm.npz')", fragment="write server files")
        # the failed save left nothing behind
        assert sql_value(c, "SELECT count(*) FROM llm_checkpoint WHERE model = 'perm_t'") == 1
        c.execute("SELECT llm_drop_model('perm_t')")


def test_file_roles_import_and_export(roles, server_dir):
    with roles("llm_filer") as c:
        n = sql_value(c, "SELECT pg_llm_import_npz(%s, 'perm_f', 2)", (os.path.join(server_dir, "perm.npz"),))
        assert n == sql_value(c, "SELECT n_params FROM llm_models WHERE model = 'perm'")
        out = os.path.join(server_dir, "perm_f.safetensors")
        assert sql_value(c, "SELECT pg_llm_export_npz(%s, 'perm_f')", (out,)) > 4 * n
        assert os.path.getsize(out) > 4 * n


@pytest.mark.parametrize("sql", [
    "SELECT pg_llm_import_npz(%s, 'perm_f', 2)",
    "SELECT pg_llm_load_bpe_vocab(%s, 'perm_f')",
    "SELECT pg_llm_load_bpe_merges(%s, 'perm')",
])
def test_errors_never_show_file_contents(roles, server_dir, sql):
    with roles("llm_filer") as c:
        c.execute("SELECT llm_create_model('perm_f', 1, 2, 16, 32, 50257, 1) "
                  "WHERE NOT EXISTS (SELECT 1 FROM llm_model_config WHERE model = 'perm_f')")
        with pytest.raises(psycopg.Error) as e:
            c.execute(sql, (os.path.join(server_dir, "secret.txt"),))
        d = e.value.diag
        shown = " ".join(str(x) for x in (d.message_primary, d.message_detail, d.message_hint, d.context))
        assert e.value.sqlstate and e.value.sqlstate != "XX000"
        assert SECRET not in shown and "4711" not in shown, shown
