"""Small helpers for SQL tests: float32 tensors to and from bytea."""
import numpy as np


def tensor(x) -> bytes:
    return np.ascontiguousarray(x, dtype=np.float32).tobytes()


def untensor(b, shape=None) -> np.ndarray:
    a = np.frombuffer(b, dtype=np.float32).copy()
    return a.reshape(shape) if shape is not None else a


def sql_value(conn, query, params=()):
    return conn.execute(query, params).fetchone()[0]


def sql_row(conn, query, params=()):
    return conn.execute(query, params).fetchone()


def sql_error(conn, query, params=()):
    """Run a statement that must fail; return (sqlstate, message)."""
    import psycopg
    try:
        conn.execute(query, params)
    except psycopg.Error as e:
        return e.sqlstate, str(e.diag.message_primary)
    raise AssertionError(f"no error from: {query}")


def assert_sql_error(conn, query, params, sqlstate, fragment):
    state, msg = sql_error(conn, query, params)
    assert state == sqlstate, f"{query}: SQLSTATE {state} ({msg}), expected {sqlstate}"
    assert fragment.lower() in msg.lower(), f"{query}: message {msg!r} lacks {fragment!r}"
