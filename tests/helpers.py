"""Small helpers for SQL tests: float32 tensors to and from bytea, error
checks, models, and a statement run in its own session (for cancellation)."""
import contextlib
import threading
import time

import numpy as np
import psycopg


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


def load_tokenizer(conn, model, data_dir):
    """GPT-2's tokenizer files from ../shared/data into a model (server-side read)."""
    conn.execute("SELECT pg_llm_load_bpe_vocab(%s, %s)", (f"{data_dir}/gpt2/vocab.json", model))
    conn.execute("SELECT pg_llm_load_bpe_merges(%s, %s)", (f"{data_dir}/gpt2/merges.txt", model))


def create_model(conn, name, n_layer=2, n_head=2, n_embd=64, n_positions=128, vocab=50257,
                 seed=1):
    conn.execute("SELECT llm_drop_model(model) FROM llm_model_config WHERE model = %s", (name,))
    return conn.execute("SELECT llm_create_model(%s, %s, %s, %s, %s, %s, %s)",
                        (name, n_layer, n_head, n_embd, n_positions, vocab, seed)).fetchone()[0]


def trained_model(conn, name, data_dir, steps, seed):
    """A small GPT-2 with the GPT-2 tokenizer, trained `steps` steps on the
    start of tinyshakespeare (dataset `name`), in a fresh database of a
    cluster of its own (replicas, pg_upgrade)."""
    import os
    conn.execute("CREATE EXTENSION IF NOT EXISTS pg_llm")
    create_model(conn, name, n_layer=2, n_head=2, n_embd=32, n_positions=64, seed=seed)
    load_tokenizer(conn, name, data_dir)
    conn.execute(f"SELECT llm_dataset_from_text('{name}', %s, 16, 0.2, '{name}')",
                 (open(os.path.join(data_dir, "tinyshakespeare.txt")).read()[:8000],))
    conn.execute(f"SELECT llm_train('{name}', {steps}, batch_size => 2, eval_interval => 0, dataset => '{name}')")


def model_params(conn, name):
    """The model's tensors from llm_param, as numpy arrays of their table shapes."""
    import numpy as np
    rows = conn.execute("SELECT name, shape, data FROM llm_param WHERE model = %s", (name,)).fetchall()
    return {n: np.frombuffer(d, np.float32).reshape(s).copy() for n, s, d in rows}


def hf_state(conn, name):
    """The model's tensors in HuggingFace's layout (Conv1D weights (in, out))."""
    from pg_llm_cy.gpt2 import hf_transposed
    out = {}
    for n, a in model_params(conn, name).items():
        out[n] = a.T.copy() if hf_transposed(n) else a
    return out


class Runner(threading.Thread):
    """Runs one statement in its own session and records how it ended."""

    def __init__(self, dsn, sql, setup=()):
        super().__init__(daemon=True)
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.pid = self.conn.execute("select pg_backend_pid()").fetchone()[0]
        for s in setup:
            self.conn.execute(s)
        self.sql = sql
        self.error = None
        self.result = None
        self.ended = None

    def run(self):
        try:
            self.result = self.conn.execute(self.sql).fetchone()
        except psycopg.Error as e:
            self.error = e
        self.ended = time.perf_counter()


def wait_in_kernel(conn, pid, settle=1.5):
    """Wait until `pid` runs its statement, then long enough to be inside the kernel."""
    deadline = time.time() + 10
    while time.time() < deadline:
        st = conn.execute("select state from pg_stat_activity where pid = %s", (pid,)).fetchone()
        if st and st[0] == "active":
            time.sleep(settle)
            return
        time.sleep(0.02)
    raise AssertionError("statement never started")


def assert_usable(c):
    """The session still works after a cancel: plain SQL and a kernel."""
    assert c.execute("select 1").fetchone()[0] == 1
    out = c.execute("select pg_llm_tensor_array(pg_llm_matmul(%s, %s, 1, 2, 1))",
                    (np.array([1, 2], np.float32).tobytes(),
                     np.array([3, 4], np.float32).tobytes())).fetchone()[0]
    assert out == [11.0]


@contextlib.contextmanager
def server_setting(dsn, name, value):
    """A server-wide (SIGHUP) setting at value for the block: ALTER SYSTEM and
    a reload, waited for until a new session sees it; reset afterwards."""
    def apply(sql, want):
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("LOAD 'pg_llm'")     # (ALTER SYSTEM knows the setting: PostgreSQL 14)
            c.execute(sql)
            c.execute("SELECT pg_reload_conf()")
        for _ in range(500):
            with psycopg.connect(dsn, autocommit=True) as c:
                c.execute("SELECT pg_llm_info()")       # the library defines the setting
                setting, boot = c.execute("SELECT setting, boot_val FROM pg_settings WHERE name = %s",
                                          (name,)).fetchone()
                if setting == (boot if want is None else str(want)):
                    return
            time.sleep(0.02)
        raise AssertionError(f"{name}: the reload was not seen")
    apply(f"ALTER SYSTEM SET {name} = {value}", value)
    try:
        yield
    finally:
        apply(f"ALTER SYSTEM RESET {name}", None)
