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


def load_tokenizer(conn, model, data_dir):
    """GPT-2's tokenizer files from ../shared/data into a model (server-side read)."""
    conn.execute("SELECT pg_llm_load_bpe_vocab(%s, %s)", (f"{data_dir}/gpt2/vocab.json", model))
    conn.execute("SELECT pg_llm_load_bpe_merges(%s, %s)", (f"{data_dir}/gpt2/merges.txt", model))


def create_model(conn, name, n_layer=2, n_head=2, d_model=64, n_positions=128, vocab=50257,
                 seed=1):
    conn.execute("SELECT llm_drop_model(model) FROM llm_model_config WHERE model = %s", (name,))
    return conn.execute("SELECT llm_create_model(%s, %s, %s, %s, %s, %s, %s)",
                        (name, n_layer, n_head, d_model, n_positions, vocab, seed)).fetchone()[0]


def model_params(conn, name):
    """The model's tensors from llm_param, as numpy arrays of their table shapes."""
    import numpy as np
    rows = conn.execute("SELECT name, shape, data FROM llm_param WHERE model = %s", (name,)).fetchall()
    return {n: np.frombuffer(d, np.float32).reshape(s).copy() for n, s, d in rows}


def hf_state(conn, name):
    """The model's tensors in HuggingFace's layout (Conv1D weights (in, out))."""
    out = {}
    for n, a in model_params(conn, name).items():
        out[n] = a.T.copy() if n.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")) else a
    return out
