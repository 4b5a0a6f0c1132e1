"""Inputs that would go past an allocation limit get 54000 and a clear
message before anything is allocated, never an internal error (XX000):
merges and vocabularies sent as text, texts to encode, the vocabulary a
model's rows make, training datasets (counted against
pg_llm.max_memory_mb), and results beyond what an int[] holds.  A large
deflated member of an .npz is inflated in cancellable slices."""
import io
import os
import struct
import time
import zipfile
import zlib

import numpy as np
import psycopg
import pytest

from helpers import Runner, create_model, load_tokenizer, sql_value


@pytest.fixture(scope="module")
def model(conn, data_dir):
    create_model(conn, "bounds", n_layer=1, n_head=1, n_embd=8, n_positions=64, vocab=50257)
    load_tokenizer(conn, "bounds", data_dir)
    yield "bounds"
    conn.execute("DELETE FROM llm_dataset WHERE dataset = 'bounds'")
    conn.execute("SELECT llm_drop_model('bounds')")


def limited(pg_dsn, mb):
    c = psycopg.connect(pg_dsn, autocommit=True)
    c.execute("LOAD 'pg_llm'")
    c.execute(f"SET pg_llm.max_memory_mb = {mb}")
    return c


def refused(c, sql, params, fragment):
    with pytest.raises(psycopg.Error) as e:
        c.execute(sql, params)
    assert e.value.sqlstate == "54000", f"{e.value.sqlstate}: {e.value}"
    assert fragment in str(e.value), str(e.value)
    assert "pg_llm.max_memory_mb" in str(e.value) or "holds" in str(e.value), str(e.value)
    return str(e.value)


def test_merges_text_is_counted_before_it_is_parsed(pg_dsn, model):
    with limited(pg_dsn, 8) as c:
        # 3 ids for each of 2 million lines: 24 MB, refused before reading a line
        refused(c, "SELECT pg_llm_load_bpe_merges_text(repeat(E'x y\\n', 2000000), %s)", (model,),
                "the merges needs 22.9 MB")
        assert c.execute("SELECT count(*) FROM llm_merges WHERE model = %s", (model,)).fetchone()[0] == 50000


def test_text_to_encode_is_counted(pg_dsn, model):
    with limited(pg_dsn, 16) as c:
        refused(c, "SELECT llm_encode(repeat('ab ', 2000000), %s)", (model,), "token ids needs")
        assert c.execute("SELECT llm_encode('Hello world', %s)", (model,)).fetchone()[0] == [15496, 995]


def test_vocabulary_rows_are_counted(pg_dsn, conn):
    create_model(conn, "bounds_vocab", n_layer=1, n_head=1, n_embd=8, n_positions=8, vocab=64)
    conn.execute("INSERT INTO llm_vocab (model, token_id, token) SELECT 'bounds_vocab', i, "
                 "CASE WHEN i < 256 THEN set_byte('\\x00'::bytea, 0, i) ELSE decode(md5(i::text), 'hex') END "
                 "FROM generate_series(0, 199999) i")
    conn.execute("INSERT INTO llm_merges VALUES ('bounds_vocab', 0, 97, 97, 97)")
    conn.execute("UPDATE llm_model_config SET tokenizer_version = 1 WHERE model = 'bounds_vocab'")
    try:
        with limited(pg_dsn, 1) as c:     # 200,000 tokens: 4.8 MB of bytes and offsets
            refused(c, "SELECT llm_encode('Hello', 'bounds_vocab')", (),
                    'the vocabulary of model "bounds_vocab" needs 4.8 MB')
        assert sql_value(conn, "SELECT llm_encode('Hello', 'bounds_vocab')") == [72, 101, 108, 108, 111]
    finally:
        conn.execute("SELECT llm_drop_model('bounds_vocab')")


def test_training_data_is_counted(pg_dsn, conn):
    create_model(conn, "bounds_train", n_layer=1, n_head=1, n_embd=8, n_positions=64, vocab=64)
    conn.execute("DELETE FROM llm_dataset WHERE dataset = 'bounds'")
    conn.execute("INSERT INTO llm_dataset (dataset, tokens, target) SELECT 'bounds', "
                 "array_fill(i % 64, ARRAY[64]), array_fill((i + 1) % 64, ARRAY[64]) "
                 "FROM generate_series(1, 6000) i")
    try:
        with limited(pg_dsn, 2) as c:       # 6000 rows x 64 tokens, ids and targets: 2.9 MB
            msg = refused(c, "SELECT llm_train('bounds_train', 1, batch_size => 2, dataset => 'bounds', "
                             "eval_interval => 0)", (), 'the train rows of dataset "bounds" needs 2.9 MB')
            assert "already in use" in msg                  # besides the training state
            refused(c, "SELECT * FROM llm_evaluate('bounds_train', 'train', 'bounds')", (),
                    'the train rows of dataset "bounds" needs 2.9 MB')
        with limited(pg_dsn, 64) as c:      # with room, it trains
            assert c.execute("SELECT llm_train('bounds_train', 1, batch_size => 2, dataset => 'bounds', "
                             "eval_interval => 0)").fetchone()[0] > 0
    finally:
        conn.execute("SELECT llm_drop_model('bounds_train')")


@pytest.mark.heavy
def test_more_tokens_than_an_array_holds(conn, model):
    """140 million tokens (a 280 MB text): more than an int[] holds."""
    with pytest.raises(psycopg.Error) as e:
        conn.execute("SELECT cardinality(llm_encode(repeat(' a', 140000000), %s))", (model,))
    assert e.value.sqlstate == "54000"
    assert "the text encodes to more tokens than an int[] holds (134217727)" in str(e.value)


def deflated_npz(path, d, vocab=50257, positions=16):
    """An .npz whose wte.weight (vocab x d float32 zeros) is one deflated
    member of a few MB that inflates to 4 * vocab * d bytes."""
    def npy_header(shape):
        h = ("{'descr': '<f4', 'fortran_order': False, 'shape': (%s), }" % ", ".join(map(str, shape)) +
             ("," if len(shape) == 1 else "")).encode()
        h = h + b" " * (64 - (10 + len(h) + 1) % 64) + b"\n"
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h
    with zipfile.ZipFile(path, "w", allowZip64=True) as z:
        head = npy_header((vocab, d))
        n = 4 * vocab * d
        info = zipfile.ZipInfo("wte.weight.npy")
        info.compress_type = zipfile.ZIP_DEFLATED
        with z.open(info, "w", force_zip64=True) as f:
            f.write(head)
            chunk = bytes(1 << 24)
            for i in range(0, n, len(chunk)):
                f.write(chunk[:min(len(chunk), n - i)])
        for name, shape in (("wpe.weight", (positions, d)), ("h.0.ln_1.weight", (d,))):
            buf = io.BytesIO()
            np.save(buf, np.zeros(shape, np.float32))
            z.writestr(name + ".npy", buf.getvalue())


@pytest.mark.heavy
def test_inflating_a_large_member_is_cancellable(pg_dsn, server_dir):
    path = os.path.join(server_dir, "deflated_big.npz")
    deflated_npz(path, d=6144)                 # wte: 1.2 GB inflated, 5 MB in the file
    os.chmod(path, 0o644)
    try:
        assert os.path.getsize(path) < 32 << 20
        r = Runner(pg_dsn, f"SELECT pg_llm_import_npz('{path}', 'bounds_big')",
                   ["SET statement_timeout = '700ms'"])
        t0 = time.perf_counter()
        r.start()
        r.join(120)
        assert isinstance(r.error, psycopg.errors.QueryCanceled), r.error or r.result
        assert r.ended - t0 - 0.7 < 1.0, r.ended - t0
        r.conn.close()
        # uncancelled, it inflates the whole member, then finds the file incomplete
        with psycopg.connect(pg_dsn, autocommit=True) as c:
            t0 = time.perf_counter()
            with pytest.raises(psycopg.Error, match="lacks tensor"):
                c.execute(f"SELECT pg_llm_import_npz('{path}', 'bounds_big')")
            print(f"\nimporting a 1.2 GB deflated member: {time.perf_counter() - t0:.2f} s uncancelled")
    finally:
        os.unlink(path)
