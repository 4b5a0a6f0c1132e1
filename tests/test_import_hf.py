"""python -m pg_llm_cy import-hf: a HuggingFace GPT-2 directory (as
save_pretrained writes it, with the tokenizer's files), or a file in a
HuggingFace-cache-like snapshot made of links, becomes a model whose logits
equal transformers' and whose tokenizer is loaded; a hub name offline fails
within a second, saying what to give instead."""
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import psycopg
import pytest

from helpers import sql_value

pytestmark = pytest.mark.heavy          # transformers and torch: once, on the newest PostgreSQL


def cli(pg_dsn, *args, timeout=300):
    env = dict(os.environ, PG_LLM_DSN=pg_dsn)
    return subprocess.run([sys.executable, "-m", "pg_llm_cy", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd="/")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, data_dir):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("hf") / "gpt2-tiny"
    torch.manual_seed(0)
    m = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_head=2, n_embd=64, n_positions=128))
    m.eval()
    m.save_pretrained(d)
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(os.path.join(data_dir, "gpt2", f), d / f)
    return d, m


def test_directory_import_matches_transformers(pg_dsn, conn, hf_dir):
    import torch
    d, m = hf_dir
    r = cli(pg_dsn, "import-hf", str(d), "--model", "hf_tiny")
    assert r.returncode == 0, r.stderr
    assert "imported 3,324,736 parameters into model hf_tiny" in r.stdout and "tokenizer of 50257 tokens and 50000 merges" in r.stdout
    assert "100.0%" in r.stderr                                   # the progress bar
    ids = sql_value(conn, "SELECT llm_encode('Hello world, the database', 'hf_tiny')")
    raw = sql_value(conn, "SELECT llm_logits(%s, 'hf_tiny')", (ids,))
    ours = np.frombuffer(raw, np.float32).reshape(len(ids), -1)
    with torch.no_grad():
        ref = m(torch.tensor([ids])).logits[0].numpy()
    assert np.max(np.abs(ours - ref)) < 1e-4
    assert sql_value(conn, "SELECT n_params FROM llm_models WHERE model = 'hf_tiny'") == \
        sum(p.numel() for n, p in m.named_parameters() if n != "lm_head.weight")
    # imported again: a new version, so no cache serves the old weights
    v = sql_value(conn, "SELECT version FROM llm_model_config WHERE model = 'hf_tiny'")
    assert cli(pg_dsn, "import-hf", str(d), "--model", "hf_tiny", "--no-tokenizer").returncode == 0
    assert sql_value(conn, "SELECT version FROM llm_model_config WHERE model = 'hf_tiny'") > v
    conn.execute("SELECT llm_drop_model('hf_tiny')")


def test_a_file_in_a_cache_snapshot(pg_dsn, conn, hf_dir, tmp_path):
    """The HuggingFace cache: blobs, and snapshots of links to them."""
    d, _ = hf_dir
    blobs, snap = tmp_path / "blobs", tmp_path / "snapshots" / "abc123"
    blobs.mkdir()
    snap.mkdir(parents=True)
    for f in os.listdir(d):
        shutil.copy(d / f, blobs / f"sha-{f}")
        os.symlink(blobs / f"sha-{f}", snap / f)
    r = cli(pg_dsn, "import-hf", str(snap / "model.safetensors"), "--model", "hf_cached")
    assert r.returncode == 0, r.stderr
    assert sql_value(conn, "SELECT has_weights AND has_tokenizer FROM llm_models WHERE model = 'hf_cached'")
    conn.execute("SELECT llm_drop_model('hf_cached')")


def test_a_hub_name_offline_fails_at_once(pg_dsn, tmp_path):
    t0 = time.monotonic()
    env_home = dict(XDG_CACHE_HOME=str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "pg_llm_cy", "import-hf", "openai-community/gpt2",
                        "--model", "hf_hub"], capture_output=True, text=True, cwd="/",
                       env=dict(os.environ, PG_LLM_DSN=pg_dsn, HF_ENDPOINT="http://127.0.0.1:9", **env_home),
                       timeout=60)
    assert time.monotonic() - t0 < 5.0          # python's start included; the refusal itself is at once
    assert r.returncode != 0
    assert "the HuggingFace hub cannot be reached" in r.stderr
    assert "give a directory that holds config.json" in r.stderr
    with psycopg.connect(pg_dsn) as c:
        assert c.execute("SELECT count(*) FROM llm_model_config WHERE model = 'hf_hub'").fetchone()[0] == 0
