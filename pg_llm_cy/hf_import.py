"""A HuggingFace GPT-2 into a pg_llm database, from the client:

    python -m pg_llm_cy import-hf SOURCE --model NAME

SOURCE is a local HuggingFace directory (config.json, model.safetensors or
pytorch_model.bin, and the tokenizer's vocab.json and merges.txt, as
save_pretrained writes them), a file inside one (a snapshot in the
HuggingFace cache, ~/.cache/huggingface/hub/models--gpt2/snapshots/<rev>/
model.safetensors, is made of links: its directory is read), or a hub name
(gpt2, openai-community/gpt2-medium), downloaded when the machine is online.

Every shape is asserted against config.json (pg_llm_cy.convert).  The
weights travel over the connection -- COPY into llm_param, in pg_llm's
layout, in one transaction with the configuration and a new model version
-- so the server needs no file access and pgllm_admin suffices; the
tokenizer follows through pg_llm_load_bpe_vocab_text / _merges_text.
"""
from __future__ import annotations

import os
import re
import sys
import time
import urllib.error
import urllib.request

import numpy as np

from pg_llm_cy.convert import load_checkpoint
from pg_llm_cy.gpt2 import GPT2Config, hf_transposed, param_names
from pg_llm_cy.tokenizer_files import ingest

HUB_FILES = ("config.json", "model.safetensors", "vocab.json", "merges.txt")
HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def hub_cache() -> str:
    return os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "pg_llm", "hf")


def resolve(source: str, timeout: float = 10.0) -> str:
    """The local directory that holds SOURCE's files."""
    if os.path.isdir(source):
        return source
    if os.path.isfile(source):
        return os.path.dirname(os.path.abspath(source))
    if not HUB_NAME.match(source):
        raise SystemExit(f"import-hf: {source} is neither a directory, nor a file, nor a hub name")
    dest = os.path.join(hub_cache(), source.replace("/", "--"))
    if all(os.path.exists(os.path.join(dest, f)) for f in HUB_FILES):
        return dest
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    os.makedirs(dest, exist_ok=True)
    for name in HUB_FILES:
        path = os.path.join(dest, name)
        if os.path.exists(path):
            continue
        url = f"{endpoint}/{source}/resolve/main/{name}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r, open(path + ".part", "wb") as f:
                while True:
                    block = r.read(1 << 20)
                    if not block:
                        break
                    f.write(block)
        except (urllib.error.URLError, OSError) as e:
            raise SystemExit(f"import-hf: {source} is not a local directory or file, and the HuggingFace "
                             f"hub cannot be reached to fetch it ({getattr(e, 'reason', e)}).\n"
                             f"Offline, give a directory that holds config.json, model.safetensors, "
                             f"vocab.json and merges.txt (save_pretrained writes them).") from None
        os.replace(path + ".part", path)
    return dest


def table_layout(cfg: GPT2Config, name: str, arr: np.ndarray) -> np.ndarray:
    """A HuggingFace tensor in llm_param's layout: Conv1D weights (in, out)
    become (out, in)."""
    return np.ascontiguousarray(arr.T if hf_transposed(name) else arr, dtype="<f4")


class Bar:
    def __init__(self, total: int, out=sys.stderr):
        self.total, self.done, self.out, self.t0 = max(total, 1), 0, out, time.time()

    def __call__(self, n: int, what: str) -> None:
        self.done += n
        frac = min(self.done / self.total, 1.0)
        mb_s = self.done / 1e6 / max(time.time() - self.t0, 1e-9)
        self.out.write(f"\r[{'#' * int(30 * frac):<30}] {frac:6.1%} {self.done / 1e6:8.1f} MB "
                       f"{mb_s:6.0f} MB/s  {what[:40]:<40}")
        self.out.flush()

    def close(self) -> None:
        self.out.write("\n")
        self.out.flush()


def upload(conn, model: str, cfg: GPT2Config, tensors: dict, progress=None) -> int:
    """Configuration and parameters of a model, in one transaction; returns
    the number of parameters."""
    n = 0
    with conn.transaction():
        conn.execute("INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab, "
                     "layer_norm_eps) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (model) DO UPDATE SET "
                     "n_layer = EXCLUDED.n_layer, n_head = EXCLUDED.n_head, n_embd = EXCLUDED.n_embd, "
                     "n_positions = EXCLUDED.n_positions, vocab = EXCLUDED.vocab, "
                     "layer_norm_eps = EXCLUDED.layer_norm_eps, train_step = 0, updated_at = now()",
                     (model, cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.n_positions, cfg.vocab, cfg.eps))
        conn.execute("DELETE FROM llm_param WHERE model = %s", (model,))
        with conn.cursor().copy("COPY llm_param (model, name, shape, data) FROM STDIN") as cp:
            for name in param_names(cfg):
                t = table_layout(cfg, name, tensors[name])
                cp.write_row((model, name, list(t.shape), t.tobytes()))
                n += t.size
                if progress:
                    progress(t.nbytes, name)
        # a new version: no cache serves the old weights
        conn.execute("UPDATE llm_model_config SET version = nextval('llm_model_version_seq') "
                     "WHERE model = %s", (model,))
    return n


def import_hf(conn, source: str, model: str, tokenizer: bool = True, out=sys.stderr) -> dict:
    path = resolve(source)
    cfg, tensors = load_checkpoint(path)
    bar = Bar(sum(a.nbytes for a in tensors.values()), out)
    try:
        n = upload(conn, model, cfg, tensors, bar)
    finally:
        bar.close()
    result = {"model": model, "params": n, "config": cfg, "path": path, "tokenizer": None}
    vocab, merges = os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt")
    if tokenizer:
        if os.path.exists(vocab) and os.path.exists(merges):
            result["tokenizer"] = ingest(conn, model, vocab, merges)
        else:
            print(f"import-hf: {path} has no vocab.json and merges.txt: model {model} has no tokenizer "
                  f"(load one with scripts/ingest_tokenizer.py)", file=out)
    return result
