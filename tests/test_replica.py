"""Read replicas: a physical streaming replica of a primary (pg_basebackup
-R, hot standby, started by the test on this machine) serves pg_llm's read
path -- generation, streaming, beam search, encoding, decoding, logits,
losses, perplexity, evaluation, llm_models -- with the primary's greedy
output, and serves a new version once its WAL is replayed (its backends'
caches notice it, as on the primary).  Nothing in the read path writes: a
standby refuses every write, so each read function succeeding there proves
it.  The functions that change the database fail there with 25006 and say
to run them on the primary."""
import os
import time

import psycopg
import pytest

from conftest import pg_config_path
from helpers import sql_value, trained_model
from pg_llm_cy.cluster import LocalCluster, bindir_of, free_port

pytestmark = pytest.mark.heavy          # once, on the newest PostgreSQL

M = "replica_m"
READS = {
    "generate": f"SELECT llm_generate('To be', 12, 0, model => '{M}', eos_token => -1)",
    "stream": f"SELECT string_agg(token, '' ORDER BY step) FROM llm_generate_stream('To be', 6, 0, "
              f"model => '{M}', eos_token => -1)",
    "beam": f"SELECT array_agg(text ORDER BY rank) FROM llm_beam_search('To be', 2, 5, '{M}', 1.0, -1)",
    "encode": f"SELECT llm_encode('Hello world', '{M}')",
    "decode": f"SELECT llm_decode(ARRAY[15496, 995], '{M}')",
    "logits": f"SELECT md5(llm_logits(ARRAY[1, 2, 3], '{M}'))",
    "loss": f"SELECT llm_loss('{M}', ARRAY[1, 2, 3], ARRAY[2, 3, 4])",
    "perplexity": f"SELECT llm_perplexity('To be, or not to be', '{M}')",
    "evaluate": f"SELECT loss FROM llm_evaluate('{M}', 'val', '{M}')",
    "models": f"SELECT version, train_step, has_weights, has_tokenizer FROM llm_models WHERE model = '{M}'",
}
WRITES = [
    f"SELECT llm_create_model('replica_new', 1, 1, 8, 8, 64)",
    f"SELECT llm_drop_model('{M}')",
    f"SELECT llm_train('{M}', 1, batch_size => 2, dataset => '{M}')",
    f"CALL llm_train_run('{M}', 1, batch_size => 2, dataset => '{M}')",
    f"SELECT llm_train_step('{M}', ARRAY[1, 2], ARRAY[2, 3])",
    f"SELECT llm_dataset_from_text('{M}', 'some text to tokenize', 2)",
    f"SELECT pg_llm_load_bpe_vocab_text('{{}}', '{M}')",
    f"SELECT pg_llm_load_bpe_merges_text('a b', '{M}')",
    f"SELECT llm_checkpoint_save('{M}', 'on a standby')",
    f"SELECT llm_checkpoint_load('{M}', 1)",
    f"SELECT pg_llm_import_npz('/nonexistent.npz', '{M}')",
]


def wait_replayed(primary, standby, timeout=60):
    lsn = sql_value(primary, "SELECT pg_current_wal_lsn()")
    deadline = time.time() + timeout
    while time.time() < deadline:
        if sql_value(standby, "SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), %s) >= 0", (lsn,)):
            return
        time.sleep(0.1)
    raise AssertionError("the standby did not replay the primary's WAL in time: "
                         + sql_value(standby, "SELECT pg_last_wal_replay_lsn()::text || ' < ' || %s::text", (lsn,)))


@pytest.fixture(scope="module")
def pair(data_dir):
    bindir = bindir_of(pg_config_path())
    primary = LocalCluster(bindir).initdb().start()
    standby = LocalCluster(bindir)
    try:
        with psycopg.connect(primary.dsn, autocommit=True) as c:
            trained_model(c, M, data_dir, steps=3, seed=5)
            c.execute(f"SELECT llm_logits('{{1}}', '{M}')")         # its shared cache file
        # a base backup of the running primary, with -R: a standby of it
        standby._run([os.path.join(bindir, "pg_basebackup"), "-D", standby.data, "-h", primary.base,
                      "-p", str(primary.port), "-U", "postgres", "-R", "-X", "stream", "-c", "fast"],
                     check=True)
        # the weight cache is not in the backup (pgsql_tmp*): the standby builds its own
        cache = "pgsql_tmp_pg_llm_cache"
        assert os.listdir(os.path.join(primary.data, cache))
        assert not os.path.exists(os.path.join(standby.data, cache))
        standby.port = free_port()
        with open(os.path.join(standby.data, "postgresql.conf"), "a") as f:
            f.write(f"port = {standby.port}\nunix_socket_directories = '{standby.base}'\nhot_standby = on\n")
        standby.start()
        yield primary, standby
    finally:
        standby.destroy()
        primary.destroy()


def test_standby_serves_the_read_path(pair):
    primary, standby = pair
    with psycopg.connect(primary.dsn, autocommit=True) as p, \
            psycopg.connect(standby.dsn, autocommit=True) as s:
        wait_replayed(p, s)
        assert sql_value(s, "SELECT pg_is_in_recovery()")
        for name, q in READS.items():
            want = p.execute(q).fetchall()
            got = s.execute(q).fetchall()
            assert got == want, f"{name}: the standby answers {got!r:.200}, the primary {want!r:.200}"
        assert len(sql_value(s, READS["generate"])) > 0
        assert s.execute("SELECT model, version FROM llm_cache").fetchall() == \
            p.execute("SELECT model, version FROM llm_cache").fetchall()


def test_standby_serves_the_new_version_once_replayed(pair):
    primary, standby = pair
    with psycopg.connect(primary.dsn, autocommit=True) as p, \
            psycopg.connect(standby.dsn, autocommit=True) as s:
        wait_replayed(p, s)
        before = sql_value(s, READS["generate"])
        loads = sql_value(s, "SELECT model_loads FROM pg_llm_backend_stats()")
        version = sql_value(s, f"SELECT version FROM llm_model_config WHERE model = '{M}'")
        p.execute(f"SELECT llm_train('{M}', 20, batch_size => 4, learning_rate => 3e-3, warmup_iters => 0, "
                  f"eval_interval => 0, dataset => '{M}')")
        want = sql_value(p, READS["generate"])
        assert want != before, "training did not change the greedy text (test needs a bigger step)"
        wait_replayed(p, s)
        assert sql_value(s, f"SELECT version FROM llm_model_config WHERE model = '{M}'") > version
        assert sql_value(s, READS["generate"]) == want           # the same session: its cache noticed
        assert sql_value(s, "SELECT model_loads FROM pg_llm_backend_stats()") == loads + 1


@pytest.mark.parametrize("sql", WRITES, ids=lambda q: q.split("(")[0].split()[-1])
def test_writes_on_the_standby_say_where_to_run_them(pair, sql):
    _, standby = pair
    with psycopg.connect(standby.dsn, autocommit=True) as s:
        with pytest.raises(psycopg.Error) as e:
            s.execute(sql)
        assert e.value.sqlstate == "25006", f"{sql}: {e.value.sqlstate} {e.value}"
        assert "cannot run on a standby" in e.value.diag.message_primary, str(e.value)
        assert "Run it on the primary" in e.value.diag.message_hint
