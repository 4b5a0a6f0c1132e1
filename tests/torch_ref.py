"""Reference models from HuggingFace transformers (torch, test-only; no hub
access): random GPT-2s with non-trivial biases and layernorms, imported into
pg_llm through scripts/convert_gpt2_checkpoint.py and pg_llm_import_npz."""
import os
import subprocess
import sys

import torch
import transformers

from helpers import sql_value

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def hf_model(L, H, C, T, V, seed, dtype=torch.float32):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(n_layer=L, n_head=H, n_embd=C, n_positions=T, vocab_size=V,
                                  bos_token_id=min(50256, V - 1), eos_token_id=min(50256, V - 1),
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():           # make biases and layernorms non-trivial
        for name, p in model.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.05)
    return model.to(dtype)


def import_hf(conn, model, name, server_dir, tmp_dir, safetensors=True):
    """Write `model` with save_pretrained, convert it and import it as `name`."""
    model.float().save_pretrained(tmp_dir, safe_serialization=safetensors)
    out = os.path.join(server_dir, f"{name}.npz")
    r = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "convert_gpt2_checkpoint.py"),
                        str(tmp_dir), out], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    os.chmod(out, 0o644)
    conn.execute("SELECT llm_drop_model(model) FROM llm_model_config WHERE model = %s", (name,))
    sql_value(conn, "SELECT pg_llm_import_npz(%s, %s, %s)", (out, name, model.config.n_head))
    os.unlink(out)
