"""Versioned SQL: installing the previous version and running
ALTER EXTENSION pg_llm UPDATE gives the same objects as a fresh install
(signatures, bodies, defaults, privileges, initial privileges, comments,
tables, columns, indexes, constraints, views), and keeps the data.
"""
import glob
import os
import re

import psycopg
import pytest

from helpers import create_model, sql_value

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Every object that belongs to the extension, by its description.  Each query
# returns (key, value) rows; the key names the object independently of its
# OID, so two databases can be compared.
MEMBERS = """
    SELECT pg_describe_object(classid, objid, objsubid)
    FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
    WHERE d.refclassid = 'pg_extension'::regclass AND e.extname = 'pg_llm' AND d.deptype = 'e'
"""
SNAPSHOT_QUERIES = {
    "members": MEMBERS.replace("SELECT pg_describe_object(classid, objid, objsubid)",
                               "SELECT pg_describe_object(classid, objid, objsubid), ''"),
    "routines": """
        SELECT p.oid::regprocedure::text,
               concat_ws(' | ', p.prokind, pg_get_function_arguments(p.oid),
                         pg_get_function_result(p.oid), p.prosrc, p.probin, p.provolatile,
                         p.proisstrict, p.proparallel, p.prosecdef, p.proconfig::text,
                         p.proacl::text, obj_description(p.oid, 'pg_proc'))
        FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.classid = 'pg_proc'::regclass
        JOIN pg_extension e ON e.oid = d.refobjid AND d.deptype = 'e' AND e.extname = 'pg_llm'
    """,
    "relations": """
        SELECT c.relname,
               concat_ws(' | ', c.relkind, c.relacl::text, obj_description(c.oid, 'pg_class'),
                         pg_get_viewdef(c.oid), c.relpersistence)
        FROM pg_class c JOIN pg_depend d ON d.objid = c.oid AND d.classid = 'pg_class'::regclass
        JOIN pg_extension e ON e.oid = d.refobjid AND d.deptype = 'e' AND e.extname = 'pg_llm'
    """,
    "columns": """
        SELECT c.relname || '.' || a.attname,
               concat_ws(' | ', a.attnum, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                         pg_get_expr(ad.adbin, ad.adrelid), a.attacl::text,
                         col_description(c.oid, a.attnum))
        FROM pg_class c JOIN pg_depend d ON d.objid = c.oid AND d.classid = 'pg_class'::regclass
        JOIN pg_extension e ON e.oid = d.refobjid AND d.deptype = 'e' AND e.extname = 'pg_llm'
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        LEFT JOIN pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
    """,
    "indexes": """
        SELECT indexname, indexdef FROM pg_indexes
        WHERE tablename IN (SELECT c.relname FROM pg_class c JOIN pg_depend d
                            ON d.objid = c.oid AND d.classid = 'pg_class'::regclass
                            JOIN pg_extension e ON e.oid = d.refobjid AND d.deptype = 'e'
                            AND e.extname = 'pg_llm')
    """,
    "constraints": """
        SELECT conrelid::regclass::text || '.' || conname, pg_get_constraintdef(oid)
        FROM pg_constraint
        WHERE conrelid IN (SELECT d.objid FROM pg_depend d JOIN pg_extension e
                           ON e.oid = d.refobjid AND d.deptype = 'e' AND e.extname = 'pg_llm'
                           WHERE d.classid = 'pg_class'::regclass)
    """,
    "triggers": """
        SELECT tgrelid::regclass::text || '.' || tgname, pg_get_triggerdef(oid)
        FROM pg_trigger
        WHERE NOT tgisinternal
          AND tgrelid IN (SELECT d.objid FROM pg_depend d JOIN pg_extension e
                          ON e.oid = d.refobjid AND d.deptype = 'e' AND e.extname = 'pg_llm'
                          WHERE d.classid = 'pg_class'::regclass)
    """,
    # the privileges pg_dump restores for extension objects
    "init_privs": """
        SELECT pg_describe_object(classoid, objoid, objsubid), privtype::text || ' ' || initprivs::text
        FROM pg_init_privs
        WHERE (classoid, objoid) IN (SELECT d.classid, d.objid FROM pg_depend d
                                     JOIN pg_extension e ON e.oid = d.refobjid
                                     WHERE d.deptype = 'e' AND e.extname = 'pg_llm')
    """,
    "extension": """
        SELECT extname, concat_ws(' | ', extversion, extrelocatable, extnamespace::regnamespace)
        FROM pg_extension WHERE extname = 'pg_llm'
    """,
}


MAY_BE_EMPTY = {"triggers"}  # none yet; compared once there are


def versions():
    """(previous, current) from the install scripts and the control file."""
    control = open(os.path.join(REPO, "pg_llm.control")).read()
    current = re.search(r"default_version = '([^']+)'", control).group(1)
    installs = sorted(
        (m.group(1) for p in glob.glob(os.path.join(REPO, "sql", "pg_llm--*.sql"))
         if (m := re.fullmatch(r"pg_llm--([0-9.]+)\.sql", os.path.basename(p)))),
        key=lambda v: tuple(int(x) for x in v.split(".")))
    assert installs[-1] == current, f"no install script for default_version {current}"
    assert len(installs) >= 2, "the previous version's install script is missing"
    return installs[-2], current


def snapshot(dsn):
    out = {}
    with psycopg.connect(dsn) as c:
        for name, q in SNAPSHOT_QUERIES.items():
            rows = c.execute(q).fetchall()
            keys = [r[0] for r in rows]
            assert len(keys) == len(set(keys)), f"{name}: keys are not unique"
            out[name] = dict(rows)
    return out


@pytest.fixture(scope="module")
def databases(cluster, pg_dsn):
    names = {"upgraded": "pg_llm_upgraded", "fresh": "pg_llm_fresh"}
    with psycopg.connect(pg_dsn, autocommit=True) as c:
        for db in names.values():
            c.execute(f"DROP DATABASE IF EXISTS {db}")
            c.execute(f"CREATE DATABASE {db}")
    dsns = {k: cluster.dsn_for(db) for k, db in names.items()}
    yield dsns
    with psycopg.connect(pg_dsn, autocommit=True) as c:
        for db in names.values():
            c.execute(f"DROP DATABASE IF EXISTS {db}")


def test_upgrade_equals_fresh_install_and_keeps_data(databases):
    previous, current = versions()
    with psycopg.connect(databases["upgraded"], autocommit=True) as c:
        c.execute(f"CREATE EXTENSION pg_llm VERSION '{previous}'")
        assert sql_value(c, "SELECT extversion FROM pg_extension WHERE extname='pg_llm'") \
            == previous
        # data made under the previous version must survive the update
        create_model(c, "kept", n_layer=1, n_head=2, n_embd=32, n_positions=16, vocab=64)
        before = c.execute("SELECT name, data FROM llm_param WHERE model='kept' "
                           "ORDER BY name").fetchall()
        version_before = sql_value(c, "SELECT version FROM llm_model_config WHERE model='kept'")
        c.execute("ALTER EXTENSION pg_llm UPDATE")
        assert sql_value(c, "SELECT extversion FROM pg_extension WHERE extname='pg_llm'") \
            == current
        assert c.execute("SELECT name, data FROM llm_param WHERE model='kept' "
                         "ORDER BY name").fetchall() == before
        assert sql_value(c, "SELECT version FROM llm_model_config WHERE model='kept'") \
            == version_before
        # the updated objects work: the changed function and the model
        row = c.execute("SELECT * FROM pg_llm_backend_stats()").fetchone()
        assert len(row) == 7
        logits = sql_value(c, "SELECT llm_logits(ARRAY[1,2,3], 'kept')")
        assert len(logits) == 3 * 64 * 4
        assert c.execute("SELECT model FROM llm_cache").fetchall() == [("kept",)]
        c.execute("SELECT llm_drop_model('kept')")
    with psycopg.connect(databases["fresh"], autocommit=True) as c:
        c.execute("CREATE EXTENSION pg_llm")
        assert sql_value(c, "SELECT extversion FROM pg_extension WHERE extname='pg_llm'") \
            == current

    upgraded, fresh = snapshot(databases["upgraded"]), snapshot(databases["fresh"])
    for name in SNAPSHOT_QUERIES:
        assert fresh[name] or name in MAY_BE_EMPTY, f"{name}: the snapshot query found nothing"
        only_fresh = sorted(set(fresh[name]) - set(upgraded[name]))
        only_upgraded = sorted(set(upgraded[name]) - set(fresh[name]))
        assert not only_fresh and not only_upgraded, \
            f"{name}: only in a fresh install {only_fresh}; only after the update {only_upgraded}"
        differ = {k: (fresh[name][k], upgraded[name][k])
                  for k in fresh[name] if fresh[name][k] != upgraded[name][k]}
        assert not differ, f"{name}: fresh vs updated differ: {differ}"


def test_update_path_is_declared(conn):
    previous, current = versions()
    paths = conn.execute("SELECT path FROM pg_extension_update_paths('pg_llm') "
                         "WHERE source = %s AND target = %s", (previous, current)).fetchall()
    assert paths and paths[0][0] == f"{previous}--{current}"


def test_snapshot_sees_a_difference(databases):
    """The comparison is not blind: a changed comment, privilege or function
    body shows up in the snapshot."""
    dsn = databases["fresh"]
    base = snapshot(dsn)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("COMMENT ON FUNCTION llm_drop_model(text) IS 'changed'")
        c.execute("GRANT EXECUTE ON FUNCTION llm_drop_model(text) TO PUBLIC")
        c.execute("ALTER TABLE llm_train_log ALTER COLUMN lr SET DEFAULT 1")
    changed = snapshot(dsn)
    assert changed["routines"]["llm_drop_model(text)"] != base["routines"]["llm_drop_model(text)"]
    assert changed["columns"]["llm_train_log.lr"] != base["columns"]["llm_train_log.lr"]
