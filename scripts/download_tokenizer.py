#!/usr/bin/env python3
"""Download GPT-2's tokenizer files (vocab.json, merges.txt) from HuggingFace.

    python scripts/download_tokenizer.py [DEST_DIR]      # default: ./gpt2-tokenizer

The files are checked against their known SHA-256.  Load them with
scripts/ingest_tokenizer.py, or on the server with
    SELECT pg_llm_load_bpe_vocab('/path/vocab.json', 'gpt2-small');
    SELECT pg_llm_load_bpe_merges('/path/merges.txt', 'gpt2-small');
"""
import os
import sys

# the installed pg_llm_cy first; the source tree when it is not installed
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pg_llm_cy.tokenizer_files import download  # noqa: E402

if __name__ == "__main__":
    dest = sys.argv[1] if len(sys.argv) > 1 else "gpt2-tokenizer"
    for name, path in download(dest).items():
        print(path)
