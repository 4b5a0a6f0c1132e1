"""Cancellation: pg_cancel_backend and statement_timeout stop a long kernel
within 1 second, a harmless interrupt (a memory-context dump request) makes
the kernel restart and still return the right answer, and the session stays
usable afterwards."""
import hashlib
import time

import numpy as np
import psycopg
import pytest

from helpers import Runner, assert_usable, wait_in_kernel

M, K, N = 4096, 4096, 12288      # ~412 GFLOP: several seconds on one thread

# operands built once (building 200 MB in the timed statement would put
# PostgreSQL's own uninterruptible string functions into the measurement)
LONG_MATMUL = f"select length(pg_llm_matmul(a, b, {M}, {K}, {N})) from cancel_inputs"


@pytest.fixture(scope="module", autouse=True)
def cancel_inputs(conn):
    conn.execute("DROP TABLE IF EXISTS cancel_inputs")
    conn.execute("CREATE TABLE cancel_inputs (a bytea, b bytea, c bytea, d bytea)")
    conn.execute(f"INSERT INTO cancel_inputs SELECT decode(repeat('00', {4 * M * K}), 'hex'), "
                 f"decode(repeat('00', {4 * K * N}), 'hex'), "
                 f"pg_llm_ones_like(decode(repeat('00', {4 * 4096 * 4096}), 'hex')), "
                 f"pg_llm_ones_like(decode(repeat('00', {4 * 4096 * 8192}), 'hex'))")
    yield
    conn.execute("DROP TABLE cancel_inputs")


def test_pg_cancel_backend_stops_kernel(conn, pg_dsn):
    r = Runner(pg_dsn, LONG_MATMUL, ["set pg_llm.num_threads = 1"])
    r.start()
    wait_in_kernel(conn, r.pid)
    t0 = time.perf_counter()
    assert conn.execute("select pg_cancel_backend(%s)", (r.pid,)).fetchone()[0]
    r.join(30)
    assert isinstance(r.error, psycopg.errors.QueryCanceled), r.error or r.result
    latency = r.ended - t0
    assert latency < 1.0, f"cancel took {latency:.3f} s"
    assert_usable(r.conn)
    r.conn.close()


def test_client_cancel_with_two_threads(conn, pg_dsn):
    r = Runner(pg_dsn, LONG_MATMUL, ["set pg_llm.num_threads = 2"])
    r.start()
    wait_in_kernel(conn, r.pid, settle=1.0)
    t0 = time.perf_counter()
    r.conn.cancel_safe()             # what psql's Ctrl-C sends
    r.join(30)
    assert isinstance(r.error, psycopg.errors.QueryCanceled), r.error or r.result
    assert r.ended - t0 < 1.0
    assert_usable(r.conn)
    r.conn.close()


def test_statement_timeout(pg_dsn):
    c = psycopg.connect(pg_dsn, autocommit=True)
    c.execute("set pg_llm.num_threads = 1")
    c.execute("set statement_timeout = '1500ms'")
    t0 = time.perf_counter()
    with pytest.raises(psycopg.errors.QueryCanceled, match="statement timeout"):
        c.execute(LONG_MATMUL)
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.5 + 1.0, f"timeout fired after {elapsed:.3f} s"
    c.execute("reset statement_timeout")
    assert_usable(c)
    c.close()


def test_harmless_interrupt_restarts_kernel(conn, pg_dsn, cluster, server_version_num):
    """A memory-context dump request sets InterruptPending without cancelling:
    the kernel stops, the request is served, and the kernel runs again."""
    m, k, n = 4096, 4096, 8192        # ~275 GFLOP on one thread: seconds
    sql = f"select md5(pg_llm_matmul(c, d, {m}, {k}, {n})) from cancel_inputs"
    expected = hashlib.md5(np.full(m * n, k, np.float32).tobytes()).hexdigest()
    r = Runner(pg_dsn, sql, ["set pg_llm.num_threads = 1"])
    r.start()
    wait_in_kernel(conn, r.pid, settle=1.2)
    assert conn.execute("select pg_log_backend_memory_contexts(%s)", (r.pid,)).fetchone()[0]
    r.join(60)
    assert r.error is None, r.error
    assert r.result[0] == expected
    assert f"logging memory contexts of PID {r.pid}" in cluster.server_log()
    r.conn.close()
