#!/usr/bin/env python3
"""Tokenize text files with a model's tokenizer into llm_dataset blocks.

    python scripts/prepare_dataset.py --model gpt2-small --block-size 64 \
        --val-fraction 0.1 [--dataset default] [--replace] [--dsn DSN] FILE...

The server does the tokenizing (llm_encode), so the ids are those the model
sees in SQL; a progress bar shows the way.  Train with
    CALL llm_train_run('gpt2-small', 1000);
"""
import argparse
import os
import sys

# the installed pg_llm_cy first; the source tree when it is not installed
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import psycopg  # noqa: E402

from pg_llm_cy.client import default_dsn  # noqa: E402
from pg_llm_cy.dataset import prepare  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+")
    ap.add_argument("--dsn", default=default_dsn())
    ap.add_argument("--model", required=True)
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--dataset", default="default")
    ap.add_argument("--replace", action="store_true", help="delete the dataset's rows first")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args()
    texts = []
    for path in a.files:
        with open(path, encoding="utf-8") as f:
            texts.append(f.read())
    with psycopg.connect(a.dsn, autocommit=True) as conn:
        n_train, n_val = prepare(conn, a.model, texts, a.block_size, a.val_fraction, a.dataset,
                                 a.replace, progress=not a.quiet)
    print(f"dataset {a.dataset}: {n_train} train and {n_val} val blocks of {a.block_size} tokens")


if __name__ == "__main__":
    main()
