"""Shared fixtures: a throwaway PostgreSQL cluster with pg_llm installed.

The cluster comes from the PostgreSQL that $PG_CONFIG names (tox sets it for
pg14 ... pg18 and distro, after `make install PG_CONFIG=...`).  When the tests run
as root, the cluster runs as an unprivileged OS user (pg_llm_cy.cluster).

Test data (the GPT-2 tokenizer, tinyshakespeare) is read from
$PG_LLM_TEST_DATA, by default ../shared/data next to the repository.
"""
import os
import subprocess

import psycopg
import pytest

from pg_llm_cy.cluster import LocalCluster, bindir_of

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.environ.get("PG_LLM_TEST_DATA", os.path.join(REPO, "..", "shared", "data"))


def pg_config_path():
    path = os.environ.get("PG_CONFIG")
    if not path:
        pytest.fail("PG_CONFIG is not set: SQL tests need the pg_config of the PostgreSQL "
                    "pg_llm was installed into (tox -e pg18 sets it)")
    return path


@pytest.fixture(scope="session")
def data_dir():
    if not os.path.isdir(DATA_DIR):
        pytest.fail(f"test data not found at {DATA_DIR} (set PG_LLM_TEST_DATA)")
    return os.path.abspath(DATA_DIR)


@pytest.fixture(scope="session")
def cluster():
    bindir = bindir_of(pg_config_path())
    c = LocalCluster(bindir).initdb().start()
    try:
        yield c
    finally:
        c.destroy()


@pytest.fixture(scope="session")
def pg_dsn(cluster):
    with psycopg.connect(cluster.dsn, autocommit=True) as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS pg_llm")
    return cluster.dsn


@pytest.fixture(scope="session")
def server_version_num(pg_dsn):
    with psycopg.connect(pg_dsn) as c:
        return int(c.execute("show server_version_num").fetchone()[0])


@pytest.fixture(scope="module")
def conn(pg_dsn):
    c = psycopg.connect(pg_dsn, autocommit=True)
    yield c
    c.close()


@pytest.fixture(scope="session")
def server_dir(cluster):
    """A directory the server's OS user can read and write (for file functions),
    inside the cluster's base directory (tmp_path's parents are private)."""
    return cluster.make_readable_dir(os.path.join(cluster.base, "files"))
