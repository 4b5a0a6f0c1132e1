"""GPT-2's tokenizer files: download them from HuggingFace, send them to a server.

The files are vocab.json (token -> id) and merges.txt (BPE merges), the same
for every GPT-2 size.  Their SHA-256 are checked after a download.
"""
from __future__ import annotations

import hashlib
import os
import urllib.request

FILES = {
    "vocab.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "merges.txt": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}
BASE_URL = "https://huggingface.co/openai-community/gpt2/resolve/main/"


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(dest: str, base_url: str = BASE_URL, timeout: float = 60.0) -> dict:
    """Fetch vocab.json and merges.txt into dest; returns their paths."""
    os.makedirs(dest, exist_ok=True)
    paths = {}
    for name, digest in FILES.items():
        path = os.path.join(dest, name)
        if not (os.path.exists(path) and sha256(path) == digest):
            tmp = path + ".part"
            with urllib.request.urlopen(base_url + name, timeout=timeout) as r, open(tmp, "wb") as f:
                f.write(r.read())
            got = sha256(tmp)
            if got != digest:
                os.unlink(tmp)
                raise RuntimeError(f"{name}: unexpected SHA-256 {got}")
            os.replace(tmp, path)
        paths[name] = path
    return paths


def ingest(conn, model: str, vocab_path: str, merges_path: str) -> tuple:
    """Load the two files into the model's tokenizer tables from the client side
    (no server file access needed).  Returns (tokens, merges)."""
    with open(vocab_path, encoding="utf-8") as f:
        vocab = f.read()
    with open(merges_path, encoding="utf-8") as f:
        merges = f.read()
    with conn.transaction():
        n_tok = conn.execute("SELECT pg_llm_load_bpe_vocab_text(%s, %s)", (vocab, model)).fetchone()[0]
        n_merge = conn.execute("SELECT pg_llm_load_bpe_merges_text(%s, %s)", (merges, model)).fetchone()[0]
    return n_tok, n_merge
