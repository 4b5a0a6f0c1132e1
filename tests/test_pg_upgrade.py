"""A major upgrade with pg_upgrade, PostgreSQL 16 -> 18, of a cluster
holding a trained model: the model stays usable, with identical parameters,
AdamW state, tokenizer, checkpoints and greedy text, and training goes on.

pg_llm must be installed into the new version too (pg_upgrade checks that
every library the old cluster uses loads in the new one), and 18's initdb
turns data checksums on by default while 16's does not: pg_upgrade needs
them to match, so the new cluster is made with --no-data-checksums
(docs/install.md, "Major upgrades")."""
import os
import subprocess

import psycopg
import pytest

from conftest import REPO, pg_config_path
from helpers import sql_value, trained_model
from pg_llm_cy.cluster import LocalCluster, bindir_of, fetch_postgres, install_extension

pytestmark = pytest.mark.heavy          # once, on the newest PostgreSQL

OLD_MAJOR = 16
M = "upgraded"
STATE = [
    f"SELECT name, md5(data), md5(m), md5(v) FROM llm_param WHERE model = '{M}' ORDER BY name",
    f"SELECT version, tokenizer_version, train_step FROM llm_model_config WHERE model = '{M}'",
    f"SELECT count(*), md5(string_agg(encode(token, 'hex'), ',' ORDER BY token_id)) FROM llm_vocab WHERE model = '{M}'",
    "SELECT checkpoint_id, name, md5(data) FROM llm_checkpoint_param ORDER BY 1, 2",
    "SELECT extversion FROM pg_extension WHERE extname = 'pg_llm'",
    f"SELECT llm_generate('To be', 12, 0, model => '{M}', eos_token => -1)",
]


def state(dsn):
    with psycopg.connect(dsn) as c:
        return [c.execute(q).fetchall() for q in STATE]


def test_pg_upgrade_keeps_a_trained_model(data_dir, tmp_path):
    new_bindir = bindir_of(pg_config_path())
    new_major = int(subprocess.check_output([os.path.join(new_bindir, "postgres"), "--version"],
                                            text=True).split()[-1].split(".")[0])
    assert new_major > OLD_MAJOR, "run on the newest PostgreSQL (tox -e pg18)"
    old_pg_config = fetch_postgres(OLD_MAJOR, os.environ.get("PG_ROOT", os.path.join(REPO, ".pg")))
    install_extension(old_pg_config, REPO)
    old = LocalCluster(bindir_of(old_pg_config)).initdb().start()
    new = LocalCluster(new_bindir)
    try:
        with psycopg.connect(old.dsn, autocommit=True) as c:
            trained_model(c, M, data_dir, steps=4, seed=9)
            c.execute(f"SELECT llm_checkpoint_save('{M}', 'before the upgrade')")
        before = state(old.dsn)
        old.stop()
        new.initdb("--no-data-checksums")
        r = new._run(["env", f"LD_LIBRARY_PATH={os.path.join(os.path.dirname(new_bindir), 'lib')}",
                      os.path.join(new_bindir, "pg_upgrade"), "-b", old.bindir, "-B", new_bindir,
                      "-d", old.data, "-D", new.data, "-p", str(old.port), "-P", str(new.port),
                      "-s", new.base, "-U", "postgres"],
                     cwd=new.base, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
        new.start()
        after = state(new.dsn)
        assert after == before
        with psycopg.connect(new.dsn, autocommit=True) as c:
            assert sql_value(c, "SHOW server_version_num").startswith(str(new_major))
            c.execute(f"SELECT llm_train('{M}', 2, batch_size => 2, eval_interval => 0, dataset => '{M}')")
            assert sql_value(c, f"SELECT train_step FROM llm_model_config WHERE model = '{M}'") == 6
            assert sql_value(c, f"SELECT version FROM llm_model_config WHERE model = '{M}'") > before[1][0][0]
    finally:
        new.destroy()
        old.destroy()
