"""Crash safety: kill -9 of a backend while it trains (mostly inside its
write-backs), saves a checkpoint or imports weights.  PostgreSQL then
restarts every session and recovers; afterwards the model is exactly its
last written-back version (parameters and AdamW state), no half checkpoint
is listed, an interrupted import left the old weights, and training
resumes.  These tests run on a cluster of their own, since a crash restarts
all the sessions of a server."""
import os
import signal
import threading
import time

import psycopg
import pytest

from helpers import create_model, sql_value
from pg_llm_cy.cluster import LocalCluster, bindir_of
from conftest import pg_config_path

# ~10 M parameters: a write-back (data, m, v) is ~125 MB, long enough to be hit
BIG = dict(n_layer=2, n_head=4, n_embd=512, n_positions=64, vocab=8000)
HP = ("batch_size => 1, block_size => 8, learning_rate => 1e-3, warmup_iters => 0, "
      "lr_decay_iters => 10000, eval_interval => 0, dataset => 'crash'")


@pytest.fixture(scope="module")
def crash_cluster(tmp_path_factory):
    c = LocalCluster(bindir_of(pg_config_path())).initdb().start()
    try:
        with psycopg.connect(c.dsn, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_llm")
            conn.execute("INSERT INTO llm_dataset (dataset, tokens, target) SELECT 'crash', "
                         "ARRAY(SELECT (i * 31 + j) % 8000 FROM generate_series(1, 16) j), "
                         "ARRAY(SELECT (i * 31 + j + 1) % 8000 FROM generate_series(1, 16) j) "
                         "FROM generate_series(1, 8) i")
        yield c
    finally:
        c.destroy()


def connect(cluster):
    return psycopg.connect(cluster.dsn, autocommit=True)


def kill_backend_after(cluster, sql, ready, setup=()):
    """Run sql in a new session; when ready(conn) holds, kill -9 its backend.
    Returns once the server accepts connections again."""
    victim = connect(cluster)
    for s in setup:
        victim.execute(s)
    pid = victim.execute("SELECT pg_backend_pid()").fetchone()[0]
    outcome = {}

    def run():
        try:
            victim.execute(sql)
            outcome["result"] = "finished"
        except psycopg.Error as e:
            outcome["result"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    with connect(cluster) as watcher:
        deadline = time.time() + 120
        while not ready(watcher, pid):
            assert time.time() < deadline, "never ready to kill"
            assert t.is_alive(), f"the statement ended first: {outcome}"
            time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    t.join(60)
    assert isinstance(outcome.get("result"), psycopg.OperationalError), outcome
    time.sleep(0.5)
    cluster.wait_ready()
    # the other sessions were restarted too: wait until recovery is over
    deadline = time.time() + 60
    while True:
        try:
            with connect(cluster) as c:
                c.execute("SELECT 1")
            break
        except psycopg.OperationalError:
            assert time.time() < deadline
            time.sleep(0.2)
    assert "terminated by signal 9" in cluster.server_log()


def params(conn, model):
    return {r[0]: (bytes(r[1]), r[2] and bytes(r[2]), r[3] and bytes(r[3])) for r in conn.execute(
        "SELECT name, data, m, v FROM llm_param WHERE model = %s", (model,))}


def test_kill_during_training(crash_cluster):
    with connect(crash_cluster) as c:
        create_model(c, "crash_train", seed=1, **BIG)
    # tiny steps, a write-back every 2: the backend is mostly writing back
    kill_backend_after(
        crash_cluster,
        f"CALL llm_train_run('crash_train', 100000, {HP}, checkpoint_interval => 2)",
        lambda w, pid: sql_value(w, "SELECT train_step FROM llm_model_config WHERE model = 'crash_train'") >= 4
        and time.sleep(0.3) is None)
    with connect(crash_cluster) as c:
        k = sql_value(c, "SELECT train_step FROM llm_model_config WHERE model = 'crash_train'")
        assert k >= 4 and k % 2 == 0
        # exactly the model after k steps: a twin trained k steps straight
        create_model(c, "crash_twin", seed=1, **BIG)
        c.execute(f"SELECT llm_train('crash_twin', {k}, {HP})")
        assert params(c, "crash_train") == params(c, "crash_twin")
        # and training resumes
        c.execute(f"SELECT llm_train('crash_train', 2, {HP})")
        c.execute(f"SELECT llm_train('crash_twin', 2, {HP})")
        assert sql_value(c, "SELECT train_step FROM llm_model_config WHERE model = 'crash_train'") == k + 2
        assert params(c, "crash_train") == params(c, "crash_twin")
        c.execute("SELECT llm_drop_model('crash_twin')")


def test_kill_during_checkpoint_save(crash_cluster):
    with connect(crash_cluster) as c:
        if not sql_value(c, "SELECT count(*) FROM llm_model_config WHERE model = 'crash_train'"):
            create_model(c, "crash_train", seed=1, **BIG)
            c.execute(f"SELECT llm_train('crash_train', 2, {HP})")
        before = params(c, "crash_train")
        n_before = sql_value(c, "SELECT count(*) FROM llm_checkpoint")

    def copying(w, pid):
        # the checkpoint's parameter rows are being written (not committed yet)
        return sql_value(w, "SELECT pg_relation_size(reltoastrelid) FROM pg_class "
                            "WHERE relname = 'llm_checkpoint_param'") > 20_000_000

    kill_backend_after(crash_cluster, "SELECT llm_checkpoint_save('crash_train', 'killed')", copying)
    with connect(crash_cluster) as c:
        assert sql_value(c, "SELECT count(*) FROM llm_checkpoint") == n_before
        assert sql_value(c, "SELECT count(*) FROM llm_checkpoint_param p WHERE NOT EXISTS "
                            "(SELECT 1 FROM llm_checkpoint k WHERE k.id = p.checkpoint_id)") == 0
        assert params(c, "crash_train") == before
        cid = sql_value(c, "SELECT llm_checkpoint_save('crash_train', 'after the crash')")
        c.execute("SELECT llm_checkpoint_load('crash_train', %s)", (cid,))
        assert params(c, "crash_train") == before


def test_kill_during_import(crash_cluster):
    server_dir = crash_cluster.make_readable_dir(os.path.join(crash_cluster.base, "files"))
    path = os.path.join(server_dir, "crash.npz")
    with connect(crash_cluster) as c:
        create_model(c, "crash_src", seed=2, **BIG)
        c.execute("SELECT pg_llm_export_npz(%s, 'crash_src')", (path,))
        create_model(c, "crash_imp", seed=3, **BIG)
        old = params(c, "crash_imp")
        v_old = sql_value(c, "SELECT version FROM llm_model_config WHERE model = 'crash_imp'")

    def writing(w, pid):
        # a moment into the import: the file is read, the rows are being written
        return bool(sql_value(w, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND state = 'active' "
                                 "AND now() - query_start > interval '150 ms'", (pid,)))

    kill_backend_after(crash_cluster, f"SELECT pg_llm_import_npz('{path}', 'crash_imp')", writing)
    with connect(crash_cluster) as c:
        assert params(c, "crash_imp") == old
        assert sql_value(c, "SELECT version FROM llm_model_config WHERE model = 'crash_imp'") == v_old
        assert sql_value(c, "SELECT length(llm_logits('{1,2}', 'crash_imp'))") == 2 * 8000 * 4
        c.execute("SELECT pg_llm_import_npz(%s, 'crash_imp')", (path,))
        assert {k: v[0] for k, v in params(c, "crash_imp").items()} == \
            {k: v[0] for k, v in params(c, "crash_src").items()}


def test_kill_during_shared_cache_build(crash_cluster):
    """kill -9 while a backend writes a model's shared cache file: nothing is
    left under a name that is read, and the next call builds it whole."""
    cache_dir = os.path.join(crash_cluster.data, "pgsql_tmp_pg_llm_cache")
    # ~63 M parameters (250 MB): the build takes a while
    shape = dict(n_layer=8, n_head=8, n_embd=768, n_positions=64, vocab=8000)
    with connect(crash_cluster) as c:
        create_model(c, "crash_cache", seed=4, **shape)
        version = sql_value(c, "SELECT version FROM llm_model_config WHERE model = 'crash_cache'")

    def building(w, pid):
        # the builder's temporary file (not a verification stamp's, which is
        # written after the build): kill at once, since a build from a table in
        # shared buffers can take less than 0.2 s
        return os.path.isdir(cache_dir) and any(".tmp" in f and ".ok.tmp" not in f
                                                for f in os.listdir(cache_dir))

    kill_backend_after(crash_cluster, "SELECT length(llm_logits('{1,2}', 'crash_cache'))", building)
    left = os.listdir(cache_dir)
    assert any(".tmp" in f for f in left), left             # the dead builder's temporary file
    assert not [f for f in left if f.endswith(f".{version}.float32")], left
    with connect(crash_cluster) as c:
        assert sql_value(c, "SELECT count(*) FROM llm_cache WHERE model = 'crash_cache'") == 0
        got = sql_value(c, "SELECT llm_logits('{1,2}', 'crash_cache')")
        assert sql_value(c, "SELECT model_loads FROM pg_llm_backend_stats()") == 1
        assert sql_value(c, "SELECT version FROM llm_cache WHERE model = 'crash_cache'") == version
    assert not [f for f in os.listdir(cache_dir) if ".tmp" in f and ".ok" not in f]
    with connect(crash_cluster) as c:                # a private copy agrees
        c.execute("SELECT llm_drop_model('crash_cache')")
        create_model(c, "crash_cache", seed=4, **shape)
        assert sql_value(c, "SELECT llm_logits('{1,2}', 'crash_cache')") == got
        c.execute("SELECT llm_drop_model('crash_cache')")
