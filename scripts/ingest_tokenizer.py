#!/usr/bin/env python3
"""Load GPT-2's vocab.json and merges.txt into a model from the client side
(the server needs no access to the files).

    python scripts/ingest_tokenizer.py --model gpt2-small \
        --vocab vocab.json --merges merges.txt [--dsn "dbname=..."]
"""
import argparse
import os
import sys

# the installed pg_llm_cy first; the source tree when it is not installed
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import psycopg  # noqa: E402

from pg_llm_cy.client import default_dsn  # noqa: E402
from pg_llm_cy.tokenizer_files import ingest  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dsn", default=default_dsn())
    ap.add_argument("--model", required=True)
    ap.add_argument("--vocab", required=True)
    ap.add_argument("--merges", required=True)
    a = ap.parse_args()
    with psycopg.connect(a.dsn, autocommit=True) as conn:
        n_tok, n_merge = ingest(conn, a.model, a.vocab, a.merges)
    print(f"{a.model}: {n_tok} tokens, {n_merge} merges")


if __name__ == "__main__":
    main()
