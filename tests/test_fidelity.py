"""Fidelity against HuggingFace transformers on the same weights: logits
within 1e-4 and greedy generation giving exactly model.generate's ids, for
random models of several shapes up to gpt2-small's.  Checkpoints written by
save_pretrained go through scripts/convert_gpt2_checkpoint.py and
pg_llm_import_npz, which tests both.  (torch is a test-only dependency; no
hub access.)"""
import numpy as np
import pytest

import torch

from helpers import load_tokenizer, sql_value
from torch_ref import hf_model, import_hf

pytestmark = pytest.mark.heavy

SHAPES = {  # name: (n_layer, n_head, n_embd, n_positions, vocab)
    "fid_tiny": (2, 2, 32, 64, 100),
    "fid_odd": (3, 3, 48, 40, 333),
    "fid_tok": (2, 4, 64, 128, 50257),
    "fid_small": (12, 12, 768, 1024, 50257),
}
PROMPTS = ["The meaning of life is", "Once upon a time, in a land far away,", "ROMEO:", "1 2 3 4"]


def import_model(name, conn, server_dir, tmp_path_factory, data_dir):
    L, H, C, T, V = SHAPES[name]
    model = hf_model(L, H, C, T, V, seed=len(name))
    # one .bin checkpoint, the rest safetensors
    import_hf(conn, model, name, server_dir, tmp_path_factory.mktemp(name),
              safetensors=(name != "fid_odd"))
    if V == 50257:
        load_tokenizer(conn, name, data_dir)
    return name, model


_imported = {}


@pytest.fixture(scope="module")
def imported_models(conn, server_dir, tmp_path_factory, data_dir):
    def get(name):
        if name not in _imported:
            _imported[name] = import_model(name, conn, server_dir, tmp_path_factory, data_dir)
        return _imported[name]
    return get


@pytest.mark.parametrize("shape", list(SHAPES))
def test_logits_match_transformers(conn, imported_models, shape):
    name, model = imported_models(shape)
    V, T = model.config.vocab_size, model.config.n_positions
    rng = np.random.default_rng(0)
    for length in sorted({1, 7, min(T, 64), T}):
        toks = rng.integers(0, V, length).tolist()
        ours = np.frombuffer(sql_value(conn, "SELECT llm_logits(%s, %s)", (toks, name)),
                             np.float32).reshape(length, V)
        with torch.no_grad():
            ref = model(torch.tensor([toks])).logits[0].numpy()
        err = np.abs(ours - ref).max()
        assert err < 1e-4, f"{name} T={length}: max |logits - transformers| = {err:.2e}"


@pytest.mark.parametrize("shape", [s for s in SHAPES if SHAPES[s][4] == 50257])
def test_greedy_matches_transformers_generate(conn, imported_models, shape):
    name, model = imported_models(shape)
    n_new = 40 if name != "fid_small" else 24
    for prompt in PROMPTS:
        ids = sql_value(conn, "SELECT llm_encode(%s, %s)", (prompt, name))
        rows = conn.execute("SELECT token_id FROM llm_generate_stream(%s, %s, 0, 50, 1.0, %s)",
                            (prompt, n_new, name)).fetchall()
        ours = [r[0] for r in rows]
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=n_new, do_sample=False,
                                 pad_token_id=50256, eos_token_id=50256)
        ref = out[0, len(ids):].tolist()
        assert ours == ref, f"{name} {prompt!r}"
