#!/usr/bin/env python3
"""Download GPT-2's tokenizer files (vocab.json, merges.txt) from HuggingFace.

    python3 scripts/download_tokenizer.py [--dest DIR]     # default: ./gpt2-tokenizer

The files are checked against their known SHA-256; files already in DIR
with the right digest are kept.  $PG_LLM_DOWNLOAD_BASE replaces the
HuggingFace address (a mirror).  Offline, copy the two files from a machine
that has them.  Load them with scripts/ingest_tokenizer.py, or on the server:
    SELECT pg_llm_load_bpe_vocab('/path/vocab.json', 'gpt2-small');
    SELECT pg_llm_load_bpe_merges('/path/merges.txt', 'gpt2-small');
"""
import argparse
import os
import sys
import urllib.error

# the installed pg_llm_cy first; the source tree when it is not installed
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pg_llm_cy.tokenizer_files import BASE_URL, download  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dest", default="gpt2-tokenizer", help="directory for the two files")
    ap.add_argument("--base-url", default=os.environ.get("PG_LLM_DOWNLOAD_BASE", BASE_URL))
    ap.add_argument("--timeout", type=float, default=60.0)
    a = ap.parse_args(argv)
    try:
        paths = download(a.dest, a.base_url, a.timeout)
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        print(f"download_tokenizer: could not fetch GPT-2's tokenizer from {a.base_url}: {e}\n"
              f"Offline? Copy vocab.json and merges.txt of GPT-2 into {a.dest}/ by hand.",
              file=sys.stderr)
        return 1
    for path in paths.values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
