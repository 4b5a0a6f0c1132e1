"""pg_dump keeps every model: a database with a model created by
llm_create_model, a used pre-registered configuration, the GPT-2
tokenizer, a dataset, a training run and checkpoints is dumped and restored
into a fresh database -- with `pg_dump -Fc` + `pg_restore`, and as plain
SQL through psql -- and gives back every tensor byte for byte, the
tokenizer, the datasets, the log, the checkpoints and the same greedy text.
Training goes on after the restore, and no model version is handed out
twice.  Untouched pre-registered configurations are not dumped (CREATE
EXTENSION inserts them), so a restore does not clash with them.  A dump
without the weights (--exclude-table-data) restores everything else.
"""
import os
import subprocess

import psycopg
import pytest

from conftest import pg_config_path
from helpers import create_model, load_tokenizer, sql_value
from pg_llm_cy.cluster import bindir_of

GREEDY = "SELECT llm_generate('The database', 12, 0, model => %s, eos_token => -1)"
TRAIN = ("SELECT llm_train(%s, 3, batch_size => 2, block_size => 16, eval_interval => 0, "
         "warmup_iters => 0, dataset => 'dump_data')")

# what a restore must give back, table by table (ordered, comparable rows)
CONTENTS = {
    "config": "SELECT model, n_layer, n_head, n_embd, n_positions, vocab, layer_norm_eps, version, "
              "tokenizer_version, train_step, preset FROM llm_model_config ORDER BY model",
    "params": "SELECT model, name, shape, md5(data), md5(m), md5(v), octet_length(data) "
              "FROM llm_param ORDER BY model, name",
    "vocab": "SELECT model, count(*), md5(string_agg(token_id || ':' || encode(token, 'hex') || special::text, ',' "
             "ORDER BY token_id)) FROM llm_vocab GROUP BY model ORDER BY model",
    "merges": "SELECT model, count(*), md5(string_agg(rank || ':' || left_id || ',' || right_id || ',' || merged_id, "
              "';' ORDER BY rank)) FROM llm_merges GROUP BY model ORDER BY model",
    "dataset": "SELECT id, dataset, tokens, target, split FROM llm_dataset ORDER BY id",
    "log": "SELECT id, model, step, lr, loss, grad_norm, val_loss, tokens_per_s, created_at "
           "FROM llm_train_log ORDER BY id",
    "checkpoints": "SELECT id, model, step, created_at, note, n_params, file_path, config "
                   "FROM llm_checkpoint ORDER BY id",
    "checkpoint_params": "SELECT checkpoint_id, name, shape, md5(data), md5(m), md5(v) "
                         "FROM llm_checkpoint_param ORDER BY checkpoint_id, name",
    "sequences": "SELECT last_value FROM llm_model_version_seq UNION ALL "
                 "SELECT last_value FROM llm_dataset_id_seq UNION ALL "
                 "SELECT last_value FROM llm_train_log_id_seq UNION ALL "
                 "SELECT last_value FROM llm_checkpoint_id_seq",
}


def bin_path(tool):
    return os.path.join(bindir_of(pg_config_path()), tool)


def contents(dsn):
    with psycopg.connect(dsn) as c:
        return {k: c.execute(q).fetchall() for k, q in CONTENTS.items()}


def fresh_db(cluster, pg_dsn, name):
    with psycopg.connect(pg_dsn, autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {name}")
        c.execute(f"CREATE DATABASE {name}")
    return cluster.dsn_for(name)


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, f"{cmd[0]} failed: {r.stderr}"
    return r


@pytest.fixture(scope="module")
def source(cluster, pg_dsn, data_dir):
    """A database holding one of everything pg_llm keeps."""
    dsn = fresh_db(cluster, pg_dsn, "pg_llm_dump_src")
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE EXTENSION pg_llm")
        create_model(c, "dumped", n_layer=2, n_head=2, n_embd=32, n_positions=32, seed=3)
        load_tokenizer(c, "dumped", data_dir)
        c.execute("SELECT llm_dataset_from_text('dumped', %s, 16, 0.2, 'dump_data')",
                  (open(os.path.join(data_dir, "tinyshakespeare.txt")).read()[:6000],))
        c.execute(TRAIN, ("dumped",))
        c.execute("SELECT llm_checkpoint_save('dumped', 'after 3 steps')")
        c.execute(TRAIN, ("dumped",))
        c.execute("SELECT llm_checkpoint_save('dumped', 'after 6 steps')")
        # a pre-registered configuration in use: its tokenizer and a changed context
        load_tokenizer(c, "gpt2-medium", data_dir)
        c.execute("UPDATE llm_model_config SET n_positions = 512 WHERE model = 'gpt2-large'")
        text = sql_value(c, GREEDY, ("dumped",))
    yield dsn, text
    with psycopg.connect(pg_dsn, autocommit=True) as c:
        c.execute("DROP DATABASE IF EXISTS pg_llm_dump_src")


def check_restored(src_dsn, dst_dsn, text):
    want, got = contents(src_dsn), contents(dst_dsn)
    for k in CONTENTS:
        assert got[k] == want[k], f"{k} differs after the restore"
    assert len(want["params"]) == 2 + 12 * 2 + 2 and len(want["checkpoint_params"]) == 2 * 28
    assert [r[0] for r in want["vocab"]] == ["dumped", "gpt2-medium"]
    with psycopg.connect(dst_dsn, autocommit=True) as c:
        assert sql_value(c, GREEDY, ("dumped",)) == text
        assert sql_value(c, "SELECT llm_encode('Hello world', 'gpt2-medium')") == [15496, 995]
        # the untouched presets are those CREATE EXTENSION inserted, still presets
        assert c.execute("SELECT model FROM llm_model_config WHERE preset ORDER BY model").fetchall() == \
            [("gpt2-small",), ("gpt2-xl",)]
        # training goes on from the restored step and AdamW state ...
        used = {v for (v,) in c.execute("SELECT version FROM llm_model_config "
                                        "UNION ALL SELECT tokenizer_version FROM llm_model_config "
                                        "WHERE tokenizer_version IS NOT NULL")}
        c.execute(TRAIN, ("dumped",))
        assert sql_value(c, "SELECT train_step FROM llm_model_config WHERE model = 'dumped'") == 9
        # ... and takes a version no model ever had: no cache can serve stale weights
        version = sql_value(c, "SELECT version FROM llm_model_config WHERE model = 'dumped'")
        assert version > max(used)
        c.execute("SELECT llm_checkpoint_load('dumped', (SELECT min(id) FROM llm_checkpoint))")
        assert sql_value(c, "SELECT train_step FROM llm_model_config WHERE model = 'dumped'") == 3


def test_custom_format_dump_and_pg_restore(cluster, pg_dsn, source, tmp_path):
    src, text = source
    dump = str(tmp_path / "pg_llm.dump")
    run([bin_path("pg_dump"), "-Fc", "-f", dump, "--dbname", src])
    dst = fresh_db(cluster, pg_dsn, "pg_llm_dump_fc")
    r = run([bin_path("pg_restore"), "--exit-on-error", "--dbname", dst, dump])
    assert "error" not in r.stderr.lower() and "warning" not in r.stderr.lower(), r.stderr
    check_restored(src, dst, text)


def test_plain_dump_through_psql(cluster, pg_dsn, source, tmp_path):
    src, text = source
    dump = str(tmp_path / "pg_llm.sql")
    run([bin_path("pg_dump"), "-f", dump, "--dbname", src])
    dst = fresh_db(cluster, pg_dsn, "pg_llm_dump_plain")
    r = run([bin_path("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", dump, "--dbname", dst])
    assert "ERROR" not in r.stderr, r.stderr
    check_restored(src, dst, text)


def test_dump_without_weights(cluster, pg_dsn, source, tmp_path):
    """The documented way to leave the (large) tensors out of a dump."""
    src, _ = source
    dump = str(tmp_path / "no_weights.dump")
    run([bin_path("pg_dump"), "-Fc", "-f", dump, "--exclude-table-data=public.llm_param",
         "--exclude-table-data=public.llm_checkpoint_param", "--dbname", src])
    dst = fresh_db(cluster, pg_dsn, "pg_llm_dump_noweights")
    run([bin_path("pg_restore"), "--exit-on-error", "--dbname", dst, dump])
    want, got = contents(src), contents(dst)
    assert got["params"] == [] and got["checkpoint_params"] == []
    for k in ("config", "vocab", "merges", "dataset", "log", "checkpoints", "sequences"):
        assert got[k] == want[k], k
    with psycopg.connect(dst, autocommit=True) as c:
        state, msg = None, ""
        try:
            c.execute(GREEDY, ("dumped",))
        except psycopg.Error as e:
            state, msg = e.sqlstate, str(e)
        assert state == "55000" and "has no parameters" in msg


def test_untouched_presets_are_not_dumped(source):
    src, _ = source
    with psycopg.connect(src) as c:
        kept = c.execute("SELECT model, preset FROM llm_model_config ORDER BY model").fetchall()
        assert kept == [("dumped", False), ("gpt2-large", False), ("gpt2-medium", False),
                        ("gpt2-small", True), ("gpt2-xl", True)]
        cond = c.execute("SELECT extcondition FROM pg_extension WHERE extname = 'pg_llm'").fetchone()[0]
        assert "WHERE NOT preset" in cond


def test_every_user_table_and_sequence_is_dumped(conn):
    """A table or sequence added to the extension without
    pg_extension_config_dump fails here."""
    members = {r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_depend d JOIN pg_class c ON c.oid = d.objid "
        "JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_llm' "
        "WHERE d.classid = 'pg_class'::regclass AND d.deptype = 'e' AND c.relkind IN ('r', 'S')")}
    dumped = {r[0] for r in conn.execute(
        "SELECT c::regclass::text FROM pg_extension e, unnest(e.extconfig) c WHERE e.extname = 'pg_llm'")}
    assert members == dumped


def test_restored_row_replaces_the_untouched_preset(conn):
    """What a restore does to a preset row CREATE EXTENSION inserted: the
    inserted row replaces it; a changed row is no longer a preset."""
    conn.execute("BEGIN")
    try:
        conn.execute("INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab, "
                     "version, train_step) VALUES ('gpt2-xl', 2, 2, 64, 128, 50257, 12345, 7)")
        assert conn.execute("SELECT n_layer, version, train_step, preset FROM llm_model_config "
                            "WHERE model = 'gpt2-xl'").fetchall() == [(2, 12345, 7, False)]
        conn.execute("UPDATE llm_model_config SET n_positions = 512 WHERE model = 'gpt2-small'")
        assert not sql_value(conn, "SELECT preset FROM llm_model_config WHERE model = 'gpt2-small'")
    finally:
        conn.execute("ROLLBACK")
