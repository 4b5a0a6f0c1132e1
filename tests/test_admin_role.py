"""pgllm_admin: CREATE EXTENSION creates the role, or accepts one that
pg_llm created (roles are shared by all databases of a cluster).  A role of
that name that somebody else prepared -- a CREATEROLE user would keep the
power to grant pg_llm's admin rights -- makes CREATE EXTENSION refuse, with
an error that names the role and says how to proceed.  A cluster of its
own: the role must not exist yet."""
import psycopg
import pytest

from conftest import pg_config_path
from pg_llm_cy.cluster import LocalCluster, bindir_of


@pytest.fixture(scope="module")
def fresh_cluster():
    c = LocalCluster(bindir_of(pg_config_path())).initdb().start()
    try:
        yield c
    finally:
        c.destroy()


def su(cluster, db="postgres"):
    return psycopg.connect(cluster.dsn_for(db), autocommit=True)


def create_extension_error(cluster, db):
    with su(cluster, db) as c:
        with pytest.raises(psycopg.Error) as e:
            c.execute("CREATE EXTENSION pg_llm")
        return e.value


def new_db(cluster, name):
    with su(cluster) as c:
        c.execute(f"DROP DATABASE IF EXISTS {name}")
        c.execute(f"CREATE DATABASE {name}")


def test_role_prepared_by_a_createrole_user_is_refused(fresh_cluster, server_version_num):
    with su(fresh_cluster) as c:
        c.execute("CREATE ROLE role_maker LOGIN CREATEROLE")
    with psycopg.connect(fresh_cluster.dsn, user="role_maker", autocommit=True) as c:
        c.execute("CREATE ROLE pgllm_admin NOLOGIN")
    new_db(fresh_cluster, "d1")
    e = create_extension_error(fresh_cluster, "d1")
    assert e.sqlstate == "42710"
    assert 'role "pgllm_admin" already exists, and pg_llm did not create it' in e.diag.message_primary
    assert "DROP ROLE pgllm_admin" in e.diag.message_hint and "CREATE EXTENSION" in e.diag.message_hint
    with su(fresh_cluster, "d1") as c:       # nothing was installed
        assert c.execute("SELECT count(*) FROM pg_extension WHERE extname = 'pg_llm'").fetchone()[0] == 0

    # forging pg_llm's comment does not help where the maker holds ADMIN
    # OPTION on it (PostgreSQL 16 and later record that for CREATEROLE users)
    with su(fresh_cluster) as c:
        marker = "pg_llm administrators: may create, import, export, train and drop pg_llm models and load tokenizers"
        c.execute(f"COMMENT ON ROLE pgllm_admin IS '{marker}'")
    if server_version_num >= 160000:
        e = create_extension_error(fresh_cluster, "d1")
        assert e.sqlstate == "42710" and "role_maker" in e.diag.message_primary
        assert "REVOKE ADMIN OPTION FOR pgllm_admin FROM role_maker" in e.diag.message_hint

    # as the hint says: drop it, and CREATE EXTENSION makes its own
    with su(fresh_cluster) as c:
        c.execute("DROP ROLE pgllm_admin")
    with su(fresh_cluster, "d1") as c:
        c.execute("CREATE EXTENSION pg_llm")
        assert c.execute("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'pgllm_admin'").fetchone()[0] is False
        assert c.execute("SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
                         "WHERE r.rolname = 'pgllm_admin' AND m.admin_option").fetchone()[0] == 0


def test_role_made_by_pg_llm_in_another_database_is_accepted(fresh_cluster):
    new_db(fresh_cluster, "d2")
    with su(fresh_cluster, "d2") as c:
        c.execute("CREATE EXTENSION pg_llm")       # the role d1's install made
        c.execute("DROP EXTENSION pg_llm")
        c.execute("CREATE EXTENSION pg_llm")       # and again after a drop


def test_role_with_powers_or_a_non_superuser_admin_is_refused(fresh_cluster):
    new_db(fresh_cluster, "d3")
    with su(fresh_cluster) as c:
        c.execute("CREATE ROLE alice LOGIN")
        c.execute("GRANT pgllm_admin TO alice WITH ADMIN OPTION")
    e = create_extension_error(fresh_cluster, "d3")
    assert e.sqlstate == "42710" and "alice" in e.diag.message_primary
    assert "REVOKE ADMIN OPTION FOR pgllm_admin FROM alice" in e.diag.message_hint
    with su(fresh_cluster) as c:
        c.execute("REVOKE ADMIN OPTION FOR pgllm_admin FROM alice")
        c.execute("ALTER ROLE pgllm_admin LOGIN")
    e = create_extension_error(fresh_cluster, "d3")
    assert e.sqlstate == "42710" and "LOGIN" in e.diag.message_primary
    with su(fresh_cluster) as c:
        c.execute("ALTER ROLE pgllm_admin NOLOGIN")
    with su(fresh_cluster, "d3") as c:
        c.execute("CREATE EXTENSION pg_llm")       # members without ADMIN OPTION are fine
