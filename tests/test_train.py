"""Training in SQL: datasets, llm_train, the llm_train_run procedure (commits,
progress, cancellation, max_seconds), llm_train_step, llm_evaluate,
checkpoints, exact resumption, and the Python client, CLI and plot script
that drive them."""
import math
import os
import subprocess
import sys
import threading
import time

import numpy as np
import psycopg
import pytest

from helpers import create_model, load_tokenizer, sql_value, untensor
from pg_llm_cy.client import Client, parse_train_notice
from pg_llm_cy.dataset import prepare

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V = 64


def fill_dataset(conn, dataset, n_train=40, n_val=8, row_len=33, seed=0):
    """Rows of a learnable pattern: token k+1 = token k + step (mod V)."""
    conn.execute("DELETE FROM llm_dataset WHERE dataset = %s", (dataset,))
    rng = np.random.default_rng(seed)
    with conn.cursor().copy("COPY llm_dataset (dataset, tokens, target, split) FROM STDIN") as cp:
        for i in range(n_train + n_val):
            start, step = rng.integers(0, V), 1 + i % 3
            seq = [(start + step * k) % V for k in range(row_len + 1)]
            cp.write_row((dataset, seq[:-1], seq[1:], "train" if i < n_train else "val"))


def tiny_model(conn, name, seed=1, n_positions=64, n_embd=32):
    create_model(conn, name, n_layer=2, n_head=2, n_embd=n_embd, n_positions=n_positions,
                 vocab=V, seed=seed)
    conn.execute("DELETE FROM llm_train_log WHERE model = %s", (name,))


def log(conn, model, col="loss"):
    return [r[0] for r in conn.execute(f"SELECT {col} FROM llm_train_log WHERE model = %s ORDER BY id",
                                       (model,))]


def param_bytes(conn, model):
    return {r[0]: (bytes(r[1]), r[2] and bytes(r[2]), r[3] and bytes(r[3])) for r in conn.execute(
        "SELECT name, data, m, v FROM llm_param WHERE model = %s", (model,))}


@pytest.fixture(scope="module", autouse=True)
def datasets(conn):
    fill_dataset(conn, "pattern")
    yield
    conn.execute("DELETE FROM llm_dataset")


# ---------------------------------------------------------------------------
# datasets
# ---------------------------------------------------------------------------
def test_dataset_from_text_matches_prepare_script(conn, data_dir):
    create_model(conn, "ds_model", n_layer=1, n_head=1, n_embd=8, n_positions=64)
    load_tokenizer(conn, "ds_model", data_dir)
    with open(os.path.join(data_dir, "tinyshakespeare.txt"), encoding="utf-8") as f:
        text = f.read()[:200000]
    rows = sql_value(conn, "SELECT llm_dataset_from_text('ds_model', %s, 64, 0.1, 'ds_sql')", (text,))
    ids = sql_value(conn, "SELECT llm_encode(%s, 'ds_model')", (text,))
    n_val = int(len(ids) * 0.1)
    n_train = len(ids) - n_val
    assert rows == (n_train - 1) // 64 + (n_val - 1) // 64
    got = conn.execute("SELECT tokens, target, split FROM llm_dataset WHERE dataset = 'ds_sql' "
                       "ORDER BY id").fetchall()
    train = [r for r in got if r[2] == "train"]
    val = [r for r in got if r[2] == "val"]
    assert len(train) == (n_train - 1) // 64 and len(val) == (n_val - 1) // 64
    for i, (tok, tgt, _) in enumerate(train):
        assert tok == ids[64 * i:64 * i + 64] and tgt == ids[64 * i + 1:64 * i + 65]
    assert val[0][0] == ids[n_train:n_train + 64]

    # the client-side script: server tokenizer in pieces, progress bar, COPY
    n_tr, n_v = prepare(conn, "ds_model", [text[:100000], text[100000:]], 64, 0.1, "ds_py",
                        progress=False)
    assert (n_tr, n_v) == (len(train), len(val))
    py = conn.execute("SELECT tokens, target, split FROM llm_dataset WHERE dataset = 'ds_py' "
                      "ORDER BY id").fetchall()
    assert py == got
    r = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "prepare_dataset.py"),
                        "--dsn", conn.info.dsn, "--model", "ds_model", "--block-size", "32",
                        "--dataset", "ds_script", os.path.join(data_dir, "tinyshakespeare.txt")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "tokenizing [" in r.stderr and "100.0%" in r.stderr    # the progress bar
    nt, nv = [sql_value(conn, "SELECT count(*) FROM llm_dataset WHERE dataset = 'ds_script' AND split = %s",
                        (split,)) for split in ("train", "val")]
    # all of tinyshakespeare: 338025 tokens, the last 33802 for validation
    assert (nt, nv) == ((304223 - 1) // 32, (33802 - 1) // 32)
    assert r.stdout.strip() == f"dataset ds_script: {nt} train and {nv} val blocks of 32 tokens"
    conn.execute("DELETE FROM llm_dataset WHERE dataset LIKE 'ds\\_%%'")
    conn.execute("SELECT llm_drop_model('ds_model')")


# ---------------------------------------------------------------------------
# llm_train and its log
# ---------------------------------------------------------------------------
def test_llm_train_learns_and_logs(conn):
    tiny_model(conn, "tr_basic")
    v0 = sql_value(conn, "SELECT version FROM llm_model_config WHERE model = 'tr_basic'")
    before = sql_value(conn, "SELECT loss FROM llm_evaluate('tr_basic', 'val', 'pattern')")
    assert abs(before - math.log(V)) < 0.3          # a fresh model is near uniform
    last = sql_value(conn, "SELECT llm_train('tr_basic', 40, batch_size => 4, block_size => 32, "
                           "learning_rate => 1e-2, warmup_iters => 4, eval_interval => 10, "
                           "eval_iters => 2, dataset => 'pattern')")
    losses = log(conn, "tr_basic")
    assert len(losses) == 40 and last == losses[-1]
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    assert log(conn, "tr_basic", "step") == list(range(1, 41))
    vals = conn.execute("SELECT step, val_loss FROM llm_train_log WHERE model = 'tr_basic' "
                        "AND val_loss IS NOT NULL ORDER BY step").fetchall()
    assert [s for s, _ in vals] == [10, 20, 30, 40]
    assert vals[-1][1] < before - 1.0
    assert all(g > 0 for g in log(conn, "tr_basic", "grad_norm"))
    assert all(t > 0 for t in log(conn, "tr_basic", "tokens_per_s"))
    cfg = conn.execute("SELECT train_step, version FROM llm_model_config WHERE model = 'tr_basic'").fetchone()
    assert cfg[0] == 40 and cfg[1] > v0
    after = sql_value(conn, "SELECT loss FROM llm_evaluate('tr_basic', 'val', 'pattern')")
    assert after < before - 1.0
    # the AdamW state was written beside the parameters
    assert sql_value(conn, "SELECT count(*) FROM llm_param WHERE model = 'tr_basic' "
                           "AND (m IS NULL OR v IS NULL)") == 0


def test_pg_gpt2_positional_form(conn):
    tiny_model(conn, "tr_compat")
    fill_dataset(conn, "default")       # pg_gpt2's llm_dataset had one dataset
    sql_value(conn, f"SELECT llm_train('tr_compat', 3, 2, 2, 32, {V}, dropout_p => 0.0, "
                    "lr_max => 1e-3, warmup => 1)")
    assert sql_value(conn, "SELECT train_step FROM llm_model_config WHERE model = 'tr_compat'") == 3
    lrs = log(conn, "tr_compat", "lr")
    assert lrs[0] == pytest.approx(1e-3 / 2, rel=1e-6)     # warmup 1: (0 + 1) / (1 + 1)
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="n_layer 2, n_head 2"):
        conn.execute(f"SELECT llm_train('tr_compat', 3, 12, 12, 768, {V})")
    conn.execute("DELETE FROM llm_dataset WHERE dataset = 'default'")


def nanogpt_lr(it, warmup, decay_iters, lr, min_lr):
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if it > decay_iters:
        return min_lr
    ratio = (it - warmup) / (decay_iters - warmup)
    return min_lr + 0.5 * (1 + math.cos(math.pi * ratio)) * (lr - min_lr)


def test_learning_rate_schedule(conn):
    tiny_model(conn, "tr_lr")
    conn.execute("SELECT llm_train('tr_lr', 30, batch_size => 2, block_size => 8, learning_rate => 1e-3, "
                 "min_lr => 1e-4, warmup_iters => 5, lr_decay_iters => 25, eval_interval => 0, "
                 "dataset => 'pattern')")
    want = [nanogpt_lr(i, 5, 25, 1e-3, 1e-4) for i in range(30)]
    assert log(conn, "tr_lr", "lr") == pytest.approx(want, rel=1e-9)
    # lr_decay_iters defaults to the run's last step
    conn.execute("SELECT llm_train('tr_lr', 10, batch_size => 2, block_size => 8, learning_rate => 1e-3, "
                 "warmup_iters => 0, eval_interval => 0, dataset => 'pattern')")
    want = [nanogpt_lr(i, 0, 40, 1e-3, 1e-4) for i in range(30, 40)]
    assert log(conn, "tr_lr", "lr")[30:] == pytest.approx(want, rel=1e-9)


def test_seeded_runs_repeat_and_differ_by_seed(conn):
    runs = {}
    for name, seed in (("tr_seed_a", 5), ("tr_seed_b", 5), ("tr_seed_c", 6)):
        tiny_model(conn, name)
        conn.execute("SELECT llm_train(%s, 5, batch_size => 3, block_size => 16, dropout => 0.1, "
                     "seed => %s, eval_interval => 0, dataset => 'pattern')", (name, seed))
        runs[name] = log(conn, name)
    assert runs["tr_seed_a"] == runs["tr_seed_b"]
    assert runs["tr_seed_a"] != runs["tr_seed_c"]


def test_gradient_accumulation_equals_larger_batch(conn):
    for name, b, acc in (("tr_acc1", 4, 1), ("tr_acc2", 2, 2), ("tr_acc4", 1, 4)):
        tiny_model(conn, name)
        conn.execute("SELECT llm_train(%s, 4, batch_size => %s, gradient_accumulation_steps => %s, "
                     "block_size => 16, learning_rate => 1e-2, warmup_iters => 0, eval_interval => 0, "
                     "dataset => 'pattern')", (name, b, acc))
    ref = log(conn, "tr_acc1")
    for name in ("tr_acc2", "tr_acc4"):
        assert log(conn, name) == pytest.approx(ref, rel=1e-5)
        assert sum(log(conn, name, "tokens_per_s")) > 0
    p1 = {n: untensor(d) for n, (d, _, _) in param_bytes(conn, "tr_acc1").items()}
    for n, (d, _, _) in param_bytes(conn, "tr_acc4").items():
        np.testing.assert_allclose(untensor(d), p1[n], rtol=0, atol=1e-4, err_msg=n)


def test_dropout_in_training_only(conn):
    # one val row as long as the block: every validation batch is exactly it
    conn.execute("DELETE FROM llm_dataset WHERE dataset = 'one_val'")
    conn.execute("INSERT INTO llm_dataset (dataset, tokens, target, split) "
                 "SELECT 'one_val', tokens, target, split FROM llm_dataset "
                 "WHERE dataset = 'pattern' AND split = 'train'")
    conn.execute("INSERT INTO llm_dataset (dataset, tokens, target, split) "
                 "SELECT 'one_val', tokens, target, 'val' FROM llm_dataset "
                 "WHERE dataset = 'pattern' AND split = 'val' ORDER BY id LIMIT 1")
    first = {}
    for name, p in (("tr_drop0", 0.0), ("tr_drop5", 0.5)):
        tiny_model(conn, name)
        conn.execute("SELECT llm_train(%s, 3, batch_size => 4, block_size => 33, dropout => %s, "
                     "eval_interval => 3, eval_iters => 2, dataset => 'one_val')", (name, p))
        first[name] = log(conn, name)[0]
        val_logged = log(conn, name, "val_loss")[-1]
        tok, tgt = conn.execute("SELECT tokens, target FROM llm_dataset WHERE dataset = 'one_val' "
                                "AND split = 'val'").fetchone()
        # the logged validation loss is the loss without dropout
        assert val_logged == pytest.approx(sql_value(conn, "SELECT llm_loss(%s, %s, %s)",
                                                     (name, tok, tgt)), abs=1e-5)
    # the same batch and weights at step 1: only the dropout masks differ
    assert abs(first["tr_drop0"] - first["tr_drop5"]) > 1e-3


def test_max_seconds_bounds_the_run(conn):
    tiny_model(conn, "tr_time", n_embd=64)
    notices = []

    def on_notice(d):
        notices.append(d.message_primary)

    conn.add_notice_handler(on_notice)
    t = time.perf_counter()
    try:
        conn.execute("SELECT llm_train('tr_time', 1000000, batch_size => 8, block_size => 32, "
                     "max_seconds => 1, eval_interval => 0, dataset => 'pattern')")
    finally:
        conn.remove_notice_handler(on_notice)
    elapsed = time.perf_counter() - t
    steps = sql_value(conn, "SELECT train_step FROM llm_model_config WHERE model = 'tr_time'")
    assert elapsed < 5 and 0 < steps < 1000000
    assert steps == len(log(conn, "tr_time"))
    assert any("max_seconds" in n for n in notices)


# ---------------------------------------------------------------------------
# the procedure: commits as it goes, progress, cancellation
# ---------------------------------------------------------------------------
class Call(threading.Thread):
    """CALL llm_train_run in its own session; records notices and how it ended."""

    def __init__(self, dsn, sql, setup=()):
        super().__init__(daemon=True)
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.pid = self.conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        for s in setup:
            self.conn.execute(s)
        self.notices = []
        self.conn.add_notice_handler(lambda d: self.notices.append(d.message_primary))
        self.sql, self.error, self.ended = sql, None, None

    def run(self):
        try:
            self.conn.execute(self.sql)
        except psycopg.Error as e:
            self.error = e
        self.ended = time.perf_counter()


def wait_for(pred, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError("timed out")


def test_procedure_commits_as_it_goes(conn, pg_dsn):
    tiny_model(conn, "pr_live")
    call = Call(pg_dsn, "CALL llm_train_run('pr_live', 60, batch_size => 8, block_size => 32, "
                        "eval_interval => 20, eval_iters => 2, checkpoint_interval => 25, "
                        "log_interval => 5, dataset => 'pattern')")
    call.start()
    # another session sees the log, and then the first write-back, while it runs
    wait_for(lambda: sql_value(conn, "SELECT count(*) FROM llm_train_log WHERE model = 'pr_live'") >= 3)
    assert call.is_alive()
    wait_for(lambda: sql_value(conn, "SELECT train_step FROM llm_model_config WHERE model = 'pr_live'") == 25)
    running = call.is_alive()
    call.join(120)
    assert running, "the run ended before its first write-back was seen"
    assert call.error is None, call.error
    assert sql_value(conn, "SELECT train_step FROM llm_model_config WHERE model = 'pr_live'") == 60
    assert len(log(conn, "pr_live")) == 60
    events = [e for e in map(parse_train_notice, call.notices) if e]
    assert [e.step for e in events if e.val_loss is None] == [1, 5, 10, 15, 25, 30, 35, 45, 50, 55]
    val = [e for e in events if e.val_loss is not None]
    assert [e.step for e in val] == [20, 40, 60]
    assert val[-1].val_perplexity == pytest.approx(math.exp(val[-1].val_loss), rel=1e-3)
    assert val[-1].val_loss == pytest.approx(log(conn, "pr_live", "val_loss")[-1], abs=1e-4)
    call.conn.close()


def hp_sql(n):
    return (f"{n}, batch_size => 8, block_size => 32, learning_rate => 3e-3, warmup_iters => 3, "
            "lr_decay_iters => 5000, eval_interval => 0, dataset => 'pattern'")


@pytest.mark.parametrize("how", ["cancel", "statement_timeout"])
def test_interrupted_run_keeps_last_writeback(conn, pg_dsn, how):
    name = f"pr_{how}"
    tiny_model(conn, name, n_embd=128)
    setup = ["SET statement_timeout = '2500ms'"] if how == "statement_timeout" else []
    call = Call(pg_dsn, f"CALL llm_train_run('{name}', {hp_sql(5000)}, checkpoint_interval => 7)",
                setup)
    t = time.perf_counter() + 2.5       # the timeout counts from the CALL
    call.start()
    if how == "cancel":
        wait_for(lambda: sql_value(conn, "SELECT count(*) FROM llm_train_log WHERE model = %s", (name,)) >= 9)
        t = time.perf_counter()
        conn.execute("SELECT pg_cancel_backend(%s)", (call.pid,))
    call.join(30)
    assert isinstance(call.error, psycopg.errors.QueryCanceled), call.error
    assert call.ended - t < 1.0, f"stopped {call.ended - t:.2f} s after the {how}"
    done = sql_value(conn, "SELECT train_step FROM llm_model_config WHERE model = %s", (name,))
    logged = len(log(conn, name))
    assert done % 7 == 0 and done >= 7 and logged >= done
    # the model is exactly the model after `done` steps: train a twin that far
    twin = f"{name}_twin"
    tiny_model(conn, twin, n_embd=128)
    conn.execute(f"SELECT llm_train('{twin}', {hp_sql(done)})")
    assert param_bytes(conn, name) == param_bytes(conn, twin)
    assert log(conn, name)[:done] == log(conn, twin)
    # the session is usable and resumes from there
    call.conn.execute("RESET statement_timeout")
    call.conn.execute(f"SELECT llm_train('{name}', {hp_sql(2)})")
    assert sql_value(conn, "SELECT train_step FROM llm_model_config WHERE model = %s", (name,)) == done + 2
    call.conn.close()


def test_model_changed_by_another_session_stops_the_run(conn, pg_dsn):
    tiny_model(conn, "pr_race")
    call = Call(pg_dsn, "CALL llm_train_run('pr_race', 1000, batch_size => 8, block_size => 32, "
                        "checkpoint_interval => 20, eval_interval => 0, dataset => 'pattern')")
    call.start()
    wait_for(lambda: sql_value(conn, "SELECT count(*) FROM llm_train_log WHERE model = 'pr_race'") >= 3)
    # another session trains the same model one step in between
    tok = list(range(10))
    conn.execute("SELECT llm_train_step('pr_race', %s, %s)", (tok, tok[1:] + [0]))
    call.join(120)
    assert isinstance(call.error, psycopg.errors.SerializationFailure), call.error
    assert "changed by another session" in call.error.diag.message_primary
    # what the other session wrote stays
    assert sql_value(conn, "SELECT train_step FROM llm_model_config WHERE model = 'pr_race'") == 1
    call.conn.close()


# ---------------------------------------------------------------------------
# llm_train_step, llm_evaluate
# ---------------------------------------------------------------------------
DECAYED = ("wte.weight", "wpe.weight", "c_attn.weight", "c_proj.weight", "c_fc.weight")


def test_train_step_is_adamw_with_clipping(conn):
    """Three steps against AdamW written out in numpy from llm_gradients."""
    tiny_model(conn, "ts_ref")
    tok = np.array([[(3 * k + b) % V for k in range(20)] for b in range(3)])
    tgt = (tok + 1) % V
    lr, wd, b1, b2, eps, clip = 1e-2, 0.1, 0.8, 0.95, 1e-6, 0.05
    p = {n: untensor(d, s) for n, s, d in conn.execute(
        "SELECT name, shape, data FROM llm_param WHERE model = 'ts_ref'")}
    m = {n: np.zeros_like(a) for n, a in p.items()}
    v = {n: np.zeros_like(a) for n, a in p.items()}
    for t in range(1, 4):
        g = {n: untensor(d, s) for n, s, d in conn.execute(
            "SELECT name, shape, grad FROM llm_gradients('ts_ref', %s, %s)",
            (tok.tolist(), tgt.tolist()))}
        norm = math.sqrt(sum(float((a.astype(np.float64) ** 2).sum()) for a in g.values()))
        assert norm > clip      # so that clipping acts
        scale = min(1.0, clip / (norm + 1e-6))
        loss = sql_value(conn, "SELECT llm_train_step('ts_ref', %s, %s, %s, %s, %s, %s, %s, %s)",
                         (tok.tolist(), tgt.tolist(), lr, wd, b1, b2, eps, clip))
        assert loss > 0 and math.isfinite(loss)
        for n in p:
            gn = g[n].astype(np.float64) * scale
            m[n] = b1 * m[n] + (1 - b1) * gn
            v[n] = b2 * v[n] + (1 - b2) * gn * gn
            mhat, vhat = m[n] / (1 - b1 ** t), v[n] / (1 - b2 ** t)
            decay = wd if n.endswith(DECAYED) else 0.0
            p[n] = p[n] - lr * (mhat / (np.sqrt(vhat) + eps) + decay * p[n])
        ours = {n: (untensor(d, s), untensor(mm, s), untensor(vv, s)) for n, s, d, mm, vv in conn.execute(
            "SELECT name, shape, data, m, v FROM llm_param WHERE model = 'ts_ref'")}
        for n in p:
            np.testing.assert_allclose(ours[n][0], p[n], rtol=0, atol=lr * 1e-2, err_msg=f"step {t} {n}")
            np.testing.assert_allclose(ours[n][1], m[n], rtol=1e-3, atol=1e-7, err_msg=f"m {t} {n}")
            np.testing.assert_allclose(ours[n][2], v[n], rtol=1e-3, atol=1e-10, err_msg=f"v {t} {n}")
        assert sql_value(conn, "SELECT train_step FROM llm_model_config WHERE model = 'ts_ref'") == t


def test_train_step_returns_loss_before_the_step(conn):
    tiny_model(conn, "ts_loss")
    tok = [(5 * k) % V for k in range(30)]
    tgt = tok[1:] + [tok[0]]
    before = sql_value(conn, "SELECT llm_loss('ts_loss', %s, %s)", (tok, tgt))
    first = sql_value(conn, "SELECT llm_train_step('ts_loss', %s, %s, 1e-2)", (tok, tgt))
    assert first == pytest.approx(before, abs=1e-5)
    for _ in range(5):
        last = sql_value(conn, "SELECT llm_train_step('ts_loss', %s, %s, 1e-2)", (tok, tgt))
    assert last < first - 0.5
    # other sessions see the new weights (the model cache is keyed by version)
    assert sql_value(conn, "SELECT llm_loss('ts_loss', %s, %s)", (tok, tgt)) < last


def test_evaluate_is_mean_loss_over_the_split(conn):
    tiny_model(conn, "ev_model", seed=3)
    rows = conn.execute("SELECT tokens, target FROM llm_dataset WHERE dataset = 'pattern' "
                        "AND split = 'val' ORDER BY id").fetchall()
    losses = [sql_value(conn, "SELECT llm_loss('ev_model', %s, %s)", r) for r in rows]
    loss, ppl = conn.execute("SELECT loss, perplexity FROM llm_evaluate('ev_model', 'val', 'pattern')").fetchone()
    assert loss == pytest.approx(np.mean(losses), abs=1e-5)
    assert ppl == pytest.approx(math.exp(loss), rel=1e-9)
    train = sql_value(conn, "SELECT loss FROM llm_evaluate('ev_model', 'train', 'pattern')")
    assert train != loss
    with Client(conn, model="ev_model") as c:
        assert c.evaluate("val", dataset="pattern") == pytest.approx((loss, ppl))


# ---------------------------------------------------------------------------
# checkpoints and exact resumption
# ---------------------------------------------------------------------------
RESUME = ("batch_size => 4, block_size => 24, learning_rate => 5e-3, warmup_iters => 4, "
          "lr_decay_iters => 20, dropout => 0.1, gradient_accumulation_steps => 2, seed => 42, "
          "eval_interval => 0, dataset => 'pattern'")


def test_checkpoint_resume_is_bit_identical(conn, pg_dsn):
    tiny_model(conn, "ck_straight")
    conn.execute(f"SELECT llm_train('ck_straight', 20, {RESUME})")

    tiny_model(conn, "ck_resumed")
    conn.execute(f"SELECT llm_train('ck_resumed', 10, {RESUME})")
    cid = sql_value(conn, "SELECT llm_checkpoint_save('ck_resumed', 'after 10')")
    saved = param_bytes(conn, "ck_resumed")
    conn.execute(f"SELECT llm_train('ck_resumed', 3, {RESUME.replace('seed => 42', 'seed => 7')})")
    assert param_bytes(conn, "ck_resumed") != saved
    with psycopg.connect(pg_dsn, autocommit=True) as other:     # a new session loads it
        other.execute("SELECT llm_checkpoint_load('ck_resumed', %s)", (cid,))
        assert param_bytes(other, "ck_resumed") == saved
        assert sql_value(other, "SELECT train_step FROM llm_model_config WHERE model = 'ck_resumed'") == 10
    # this session's training state was of the 13-step model: it must reload
    conn.execute(f"SELECT llm_train('ck_resumed', 10, {RESUME})")
    straight = log(conn, "ck_straight")
    resumed = log(conn, "ck_resumed")
    assert resumed[:10] + resumed[13:] == straight          # bit for bit
    assert param_bytes(conn, "ck_resumed") == param_bytes(conn, "ck_straight")


def test_checkpoint_listing_files_and_errors(conn, server_dir):
    tiny_model(conn, "ck_list")
    conn.execute("SELECT llm_train('ck_list', 2, batch_size => 2, block_size => 8, eval_interval => 0, "
                 "dataset => 'pattern')")
    path = os.path.join(server_dir, "ck_list.safetensors")
    cid = sql_value(conn, "SELECT llm_checkpoint_save('ck_list', 'two steps', %s)", (path,))
    row = conn.execute("SELECT model, step, note, n_params, file_path FROM llm_checkpoint WHERE id = %s",
                       (cid,)).fetchone()
    n = sql_value(conn, "SELECT n_params FROM llm_models WHERE model = 'ck_list'")
    assert row == ("ck_list", 2, "two steps", n, path)
    assert os.path.getsize(path) > 4 * n
    # the file holds the parameters: import it under another name
    sql_value(conn, "SELECT pg_llm_import_npz(%s, 'ck_list_file', 2)", (path,))
    a = {k: d for k, (d, _, _) in param_bytes(conn, "ck_list").items()}
    b = {k: d for k, (d, _, _) in param_bytes(conn, "ck_list_file").items()}
    assert a == b
    tiny_model(conn, "ck_other")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="belongs to model"):
        conn.execute("SELECT llm_checkpoint_load('ck_other', %s)", (cid,))
    with pytest.raises(psycopg.errors.UndefinedObject, match="does not exist"):
        conn.execute("SELECT llm_checkpoint_load('ck_list', -1)")
    # dropping the model drops its checkpoints
    conn.execute("SELECT llm_drop_model('ck_list')")
    assert sql_value(conn, "SELECT count(*) FROM llm_checkpoint WHERE id = %s", (cid,)) == 0
    assert sql_value(conn, "SELECT count(*) FROM llm_checkpoint_param WHERE checkpoint_id = %s", (cid,)) == 0


# ---------------------------------------------------------------------------
# the client, the CLI and the plot
# ---------------------------------------------------------------------------
def test_client_train_reports_progress(pg_dsn):
    with Client(pg_dsn) as c:
        tiny_model(c.conn, "cl_train")
        events = []
        last = c.train(12, model="cl_train", progress=events.append, batch_size=4, block_size=16,
                       eval_interval=6, eval_iters=2, dataset="pattern", learning_rate=1e-2)
        assert [e.step for e in events if e.val_loss is None] == list(range(1, 13))[:5] + list(range(7, 12))
        assert [e.step for e in events if e.val_loss is not None] == [6, 12]
        assert last["step"] == 12 and last["val_loss"] == pytest.approx(events[-1].val_loss, abs=1e-4)
        with pytest.raises(TypeError, match="unknown hyper-parameters"):
            c.train(1, model="cl_train", lr=1)


def test_cli_train_and_plot(conn, pg_dsn, tmp_path):
    tiny_model(conn, "cli_train")
    r = subprocess.run([sys.executable, "-m", "pg_llm_cy", "--dsn", pg_dsn, "train", "--model", "cli_train",
                        "--steps", "8", "--batch-size", "2", "--block-size", "16", "--eval-interval", "4",
                        "--eval-iters", "1", "--dataset", "pattern"],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "8/8 step 8 loss" in r.stderr and "val perplexity" in r.stderr
    assert "trained cli_train to step 8" in r.stdout
    r = subprocess.run([sys.executable, "-m", "pg_llm_cy", "--dsn", pg_dsn, "train", "--model", "cli_train",
                        "--steps", "1", "--learning-rate", "0", "--dataset", "pattern"],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 1 and "learning_rate must be positive" in r.stderr

    out = tmp_path / "curve.png"
    r = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "plot_training.py"), "--dsn", pg_dsn,
                        "--model", "cli_train", "--out", str(out), "--smooth", "0.5"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    png = out.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (800, 600) and len(png) > 10000
    assert "8 steps" in r.stdout
    r = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "plot_training.py"), "--dsn", pg_dsn,
                        "--model", "no_such_model", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode != 0 and "no steps" in r.stderr
