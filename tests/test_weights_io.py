"""pg_llm_import_npz / pg_llm_export_npz: numpy .npz (stored and deflated)
and .safetensors with HuggingFace names, exact round trips, and every kind of
bad file: a clear ERROR and no partly imported model."""
import os
import shutil
import zipfile

import numpy as np
import pytest

from helpers import assert_sql_error, hf_state, model_params, sql_value
from pg_llm_cy import kernels as K
from pg_llm_cy.convert import write_safetensors
from pg_llm_cy.gpt2 import GPT2Config, hf_shape, param_names, to_flat

CFG = GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=16, vocab=60)


def random_state(cfg=CFG, seed=0, prefix=""):
    rng = np.random.default_rng(seed)
    return {prefix + n: (rng.standard_normal(hf_shape(cfg, n)) * 0.1).astype(np.float32)
            for n in param_names(cfg)}


def write(server_dir, name, state, fmt):
    path = os.path.join(server_dir, name)
    if fmt == "npz":
        np.savez(path, **state)
    elif fmt == "npz_compressed":
        np.savez_compressed(path, **state)
    else:
        write_safetensors(state, path)
    os.chmod(path, 0o644)
    return path


def imported_logits(conn, model, toks):
    raw = sql_value(conn, "SELECT llm_logits(%s, %s)", (toks, model))
    return np.frombuffer(raw, np.float32).reshape(len(toks), -1)


@pytest.mark.parametrize("fmt,prefix", [("npz", ""), ("npz_compressed", "transformer."),
                                        ("safetensors", "transformer."), ("safetensors", "")])
def test_import(conn, server_dir, fmt, prefix):
    state = random_state(prefix=prefix)
    ext = "safetensors" if fmt == "safetensors" else "npz"
    path = write(server_dir, f"w_{fmt}_{len(prefix)}.{ext}", state, fmt)
    n = sql_value(conn, "SELECT pg_llm_import_npz(%s, 'imp', 2)", (path,))
    assert n == sum(a.size for a in state.values())
    got = hf_state(conn, "imp")
    for name, arr in state.items():
        np.testing.assert_array_equal(got[name[len(prefix):]], arr)
    toks = [1, 5, 59, 0, 7]
    want = K.gpt2_logits(to_flat(CFG, state), CFG, toks)
    np.testing.assert_array_equal(imported_logits(conn, "imp", toks), want)
    assert conn.execute("SELECT n_layer, n_head, n_embd, n_positions, vocab FROM llm_model_config "
                        "WHERE model = 'imp'").fetchone() == (2, 2, 32, 16, 60)


def test_fortran_ordered_arrays(conn, server_dir):
    state = {k: np.asfortranarray(v) for k, v in random_state(seed=3).items()}
    path = write(server_dir, "fortran.npz", state, "npz")
    sql_value(conn, "SELECT pg_llm_import_npz(%s, 'imp_f', 2)", (path,))
    got = hf_state(conn, "imp_f")
    for name, arr in state.items():
        np.testing.assert_array_equal(got[name], arr)


def test_known_buffers_ignored_and_tied_head(conn, server_dir):
    state = random_state(seed=4, prefix="transformer.")
    state["transformer.h.0.attn.bias"] = np.tril(np.ones((1, 1, 16, 16), np.float32))
    state["transformer.h.1.attn.masked_bias"] = np.array(-1e4, np.float32)
    state["lm_head.weight"] = state["transformer.wte.weight"].copy()
    path = write(server_dir, "buffers.npz", state, "npz")
    assert sql_value(conn, "SELECT pg_llm_import_npz(%s, 'imp_b', 2)", (path,)) > 0


@pytest.mark.parametrize("ext", ["npz", "safetensors"])
def test_export_import_round_trip(conn, server_dir, ext):
    path = write(server_dir, f"src_{ext}.npz", random_state(seed=5), "npz")
    sql_value(conn, "SELECT pg_llm_import_npz(%s, 'rt_src', 2)", (path,))
    out = os.path.join(server_dir, f"exported.{ext}")
    size = sql_value(conn, "SELECT pg_llm_export_npz(%s, 'rt_src')", (out,))
    assert size == os.path.getsize(out)
    sql_value(conn, "SELECT pg_llm_import_npz(%s, 'rt_dst', 2)", (out,))
    same = conn.execute("SELECT count(*), bool_and(a.data = b.data AND a.shape = b.shape) "
                        "FROM llm_param a JOIN llm_param b USING (name) "
                        "WHERE a.model = 'rt_src' AND b.model = 'rt_dst'").fetchone()
    assert same == (4 + 12 * 2, True)
    # readable by numpy / the safetensors layout, with HuggingFace shapes
    if ext == "npz":
        with np.load(out) as z:
            assert z["h.0.attn.c_attn.weight"].shape == (32, 96)
            np.testing.assert_array_equal(z["h.1.mlp.c_fc.weight"],
                                          hf_state(conn, "rt_src")["h.1.mlp.c_fc.weight"])
        assert zipfile.ZipFile(out).testzip() is None          # every CRC right
    else:
        with open(out, "rb") as f:
            data = f.read()
        n = int.from_bytes(data[:8], "little")
        entries = {e[0]: e for e in K.safetensors_parse(data[8:8 + n])}
        assert entries["h.0.attn.c_attn.weight"][2] == (32, 96)


def test_import_replaces_and_is_atomic(conn, server_dir):
    good = write(server_dir, "good.npz", random_state(seed=6), "npz")
    sql_value(conn, "SELECT pg_llm_import_npz(%s, 'atomic', 2)", (good,))
    version = sql_value(conn, "SELECT version FROM llm_model_config WHERE model = 'atomic'")
    before = model_params(conn, "atomic")
    bad_state = random_state(seed=7)
    del bad_state["ln_f.bias"]
    bad = write(server_dir, "bad.npz", bad_state, "npz")
    assert_sql_error(conn, "SELECT pg_llm_import_npz(%s, 'atomic', 2)", (bad,), "22000",
                     'lacks tensor "ln_f.bias"')
    assert sql_value(conn, "SELECT version FROM llm_model_config WHERE model = 'atomic'") == version
    after = model_params(conn, "atomic")
    assert all(np.array_equal(before[k], after[k]) for k in before)
    # a failed import of a new model leaves no model behind
    assert_sql_error(conn, "SELECT pg_llm_import_npz(%s, 'never_there', 2)", (bad,), "22000", "lacks")
    assert sql_value(conn, "SELECT count(*) FROM llm_model_config WHERE model = 'never_there'") == 0


def corrupt(path, server_dir, name, fn):
    with open(path, "rb") as f:
        data = bytearray(f.read())
    fn(data)
    out = os.path.join(server_dir, name)
    with open(out, "wb") as f:
        f.write(bytes(data))
    os.chmod(out, 0o644)
    return out


def test_bad_files(conn, server_dir):
    base = random_state(seed=8)
    good = write(server_dir, "base.npz", base, "npz")
    size = os.path.getsize(good)
    cases = []
    s = dict(base)
    s["h.0.ln_1.weight"] = np.zeros(31, np.float32)
    cases.append((write(server_dir, "shape.npz", s, "npz"), "22000", "wrong shape"))
    s = dict(base)
    s["h.0.ln_1.bias"] = s["h.0.ln_1.bias"].astype(np.float64)
    cases.append((write(server_dir, "dtype.npz", s, "npz"), "42804", "not float32"))
    s = dict(base)
    s["h.0.extra.weight"] = np.zeros(3, np.float32)
    cases.append((write(server_dir, "unknown.npz", s, "npz"), "22000", "does not have"))
    s = dict(base)
    s["wte.weight"] = s["wte.weight"].copy()
    s["wte.weight"][3, 3] = np.nan
    cases.append((write(server_dir, "nan.npz", s, "npz"), "22P01", "NaN"))
    s = dict(base)
    s["lm_head.weight"] = s["wte.weight"] + 1
    cases.append((write(server_dir, "untied.npz", s, "npz"), "0A000", "differs from wte"))
    cases.append((corrupt(good, server_dir, "truncated.npz", lambda d: d.__delitem__(slice(size // 2, None))),
                  "22P04", "not a valid weights file"))
    cases.append((corrupt(good, server_dir, "crc.npz", lambda d: d.__setitem__(size // 2, d[size // 2] ^ 0xFF)),
                  "22P04", "CRC"))
    cases.append((corrupt(good, server_dir, "junk.npz", lambda d: d.__setitem__(slice(0, 4), b"JUNK")),
                  "22P04", "neither"))
    st = write(server_dir, "base.safetensors", base, "safetensors")
    cases.append((corrupt(st, server_dir, "trunc.safetensors",
                          lambda d: d.__delitem__(slice(len(d) - 100, None))), "22P04", "outside the file"))
    cases.append((corrupt(st, server_dir, "hdr.safetensors", lambda d: d.__setitem__(slice(8, 10), b"{{")),
                  "22P04", "malformed safetensors header"))
    cases.append(("/no/such/weights.npz", "58P01", "could not open"))
    for path, state, fragment in cases:
        assert_sql_error(conn, "SELECT pg_llm_import_npz(%s, 'badfile', 2)", (path,), state, fragment)
        assert sql_value(conn, "SELECT count(*) FROM llm_model_config WHERE model = 'badfile'") == 0


def test_export_errors(conn, server_dir):
    assert_sql_error(conn, "SELECT pg_llm_export_npz(%s, 'gpt2-xl')",
                     (os.path.join(server_dir, "x.npz"),), "55000", "has no parameters")
    assert_sql_error(conn, "SELECT pg_llm_export_npz(%s, 'nope')",
                     (os.path.join(server_dir, "x.npz"),), "42704", "does not exist")
    assert_sql_error(conn, "SELECT pg_llm_export_npz('/tmp/x.bin', 'nope')", (), "22023",
                     ".npz or .safetensors")
    assert_sql_error(conn, "SELECT pg_llm_export_npz('/no/such/dir/x.npz', 'imp')", (), "58P01",
                     "could not create")
    assert not [f for f in os.listdir(server_dir) if ".tmp." in f]
