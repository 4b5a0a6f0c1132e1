"""A short run of scripts/fuzz_parsers.py in CI: every parser of outside
bytes (npy, zip, deflate, safetensors, vocab.json, merges.txt) on mutated
valid inputs, and tensors, weights files and tokenizer files through the
server.  The nightly-size run (100,000 inputs per parser, under
AddressSanitizer) is the script itself:
    python scripts/fuzz_parsers.py --asan -n 100000
    python scripts/fuzz_parsers.py --asan-server .pg/pg16/bin/pg_config --sql-n 170000
"""
import os
import sys

import pytest

pytestmark = pytest.mark.heavy      # once, on the newest PostgreSQL

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import fuzz_parsers  # noqa: E402


@pytest.fixture(autouse=True)
def data(data_dir, monkeypatch):
    monkeypatch.setattr(fuzz_parsers, "DATA", data_dir)


@pytest.mark.parametrize("parser", list(fuzz_parsers.PARSERS))
def test_parser_survives_mutants(parser):
    ok, rejected = fuzz_parsers.fuzz(parser, 3000, seed=2)
    assert ok + rejected == 3000
    assert rejected > 0          # the mutants do reach the error paths
    assert ok > 0                # and some still parse: the seeds are valid


def test_seeds_are_valid():
    for parser, inputs in fuzz_parsers.seeds().items():
        for data in inputs:
            fuzz_parsers.PARSERS[parser](data)


def test_server_survives_mutants(pg_dsn, server_dir):
    counts = fuzz_parsers.sql_fuzz(pg_dsn, 1500, seed=3, server_dir=server_dir)
    assert sum(counts.values()) == 1500 and min(counts.values()) > 100


def test_tokenizer_construction_survives_generated_vocabularies():
    """Random and adversarial vocabularies and merge lists (pair explosions,
    prefix chains, duplicates, huge and empty tokens, cycles): each builds a
    tokenizer or is refused, encodes round trip, and finishes (a hang makes
    the watchdog end the process).  100,000 of them under AddressSanitizer:
        python scripts/fuzz_parsers.py --asan --parsers bpe -n 100000"""
    counts, slowest = fuzz_parsers.fuzz_bpe(1500, seed=2)
    assert counts["ok"] > 1000 and counts["refused"] > 0
    print(f"\nbpe: {counts}, slowest case {slowest:.2f} s")
