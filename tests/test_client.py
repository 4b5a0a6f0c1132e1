"""The Python client and the command line, against a real server."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from helpers import create_model, load_tokenizer
from pg_llm_cy.client import Client


@pytest.fixture(scope="module")
def client_model(conn, data_dir):
    create_model(conn, "cli", n_layer=2, n_head=2, n_embd=64, n_positions=96, seed=21)
    load_tokenizer(conn, "cli", data_dir)
    return "cli"


@pytest.fixture
def llm(pg_dsn, client_model):
    with Client(pg_dsn, model="cli") as c:
        yield c


def test_generate_stream_beam(llm):
    text = llm.generate("Once upon", max_tokens=10, temperature=0)
    events = list(llm.stream("Once upon", max_tokens=10, temperature=0))
    assert "".join(e.token for e in events) == events[-1].text == text
    assert events[-1].is_complete and [e.step for e in events] == list(range(1, len(events) + 1))
    beams = llm.beam_search("Once upon", beam_width=2, max_tokens=5)
    assert [b.rank for b in beams] == [1, 2] and beams[0].score >= beams[1].score
    assert llm.generate("Once upon", max_tokens=8, seed=3) == llm.generate("Once upon", max_tokens=8, seed=3)


def test_stream_can_stop_early(llm):
    gen = llm.stream("Once", max_tokens=40, temperature=0)
    first = next(gen)
    gen.close()
    assert first.step == 1
    assert llm.generate("Once", max_tokens=2, temperature=0)          # the session works on


def test_encode_decode_logits(llm):
    ids = llm.encode("Hello world")
    assert ids == [15496, 995]
    assert llm.decode(ids) == "Hello world"
    lg = llm.logits(ids)
    assert lg.shape == (2, 50257) and np.isfinite(lg).all()
    assert llm.perplexity("Hello world, again") > 1
    assert ("cli", llm.models()[[m[0] for m in llm.models()].index("cli")][1], True, True) in llm.models()


def run_cli(pg_dsn, *args, stdin=None):
    env = dict(os.environ, PG_LLM_DSN=pg_dsn)
    return subprocess.run([sys.executable, "-m", "pg_llm_cy", *args], env=env, input=stdin,
                          capture_output=True, text=True, timeout=120)


def test_cli_generate(pg_dsn, llm):
    want = llm.generate("Once upon", max_tokens=6, temperature=0)
    r = run_cli(pg_dsn, "generate", "Once upon", "--model", "cli", "--max-tokens", "6", "--temperature", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout == want + "\n"
    r = run_cli(pg_dsn, "generate", "Once upon", "--model", "cli", "--max-tokens", "6", "--temperature", "0",
                "--stream")
    assert r.returncode == 0 and r.stdout == want + "\n"


def test_generate_batch(llm):
    prompts = ["Once upon", "The king said", "A"]
    want = [llm.generate(p, max_tokens=7, temperature=0) for p in prompts]
    assert llm.generate_batch(prompts, max_tokens=7, temperature=0) == want
    seen = []
    got = llm.generate_batch(prompts * 3, max_tokens=5, temperature=0.8, seed=4, chunk_size=2,
                             progress=lambda done, total: seen.append((done, total)))
    assert got == [llm.generate(p, max_tokens=5, temperature=0.8, seed=4) for p in prompts * 3]
    assert seen == [(2, 9), (4, 9), (6, 9), (8, 9), (9, 9)]
    assert llm.generate_batch([]) == []
    with pytest.raises(ValueError, match="chunk_size"):
        llm.generate_batch(prompts, chunk_size=0)


def test_cli_generate_file(pg_dsn, llm, tmp_path):
    # \x0c and U+2028 are prompt text, not line ends; \r\n ends a line
    prompts = ["Once upon", "", "The king\x0csaid", "ROMEO:\u2028JULIET:"]
    f = tmp_path / "prompts.txt"
    f.write_bytes(("\n".join(prompts[:2]) + "\r\n" + "\n".join(prompts[2:]) + "\n").encode())
    want = [llm.generate(p, max_tokens=12, temperature=0) if p else "" for p in prompts]
    r = run_cli(pg_dsn, "generate", "--file", str(f), "--model", "cli", "--max-tokens", "12",
                "--temperature", "0", "--chunk-size", "2")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split("\n")
    assert lines[-1] == "" and len(lines) == len(prompts) + 1
    unescape = {"\\\\": "\\", "\\n": "\n", "\\r": "\r"}
    got = [re.sub(r"\\\\|\\n|\\r", lambda m: unescape[m.group(0)], line) for line in lines[:-1]]
    assert got == want
    assert "3/3 prompts" in r.stderr                     # the progress bar
    r = run_cli(pg_dsn, "generate", "--file", "-", "--quiet", "--model", "cli", "--max-tokens", "12",
                "--temperature", "0", stdin="ROMEO:\n")
    assert r.returncode == 0 and r.stderr == "" and r.stdout.count("\n") == 1
    r = run_cli(pg_dsn, "generate", "x", "--file", str(f), "--model", "cli")
    assert r.returncode == 2 and "--file takes no prompt" in r.stderr


def test_cli_interactive(pg_dsn, llm):
    a = llm.generate("Hello", max_tokens=4, temperature=0)
    b = llm.generate("Goodbye", max_tokens=4, temperature=0)
    r = run_cli(pg_dsn, "generate", "--interactive", "--stream", "--model", "cli", "--max-tokens", "4",
                "--temperature", "0", stdin="Hello\n\nGoodbye\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{a}\n{b}\n"


def test_cli_other_commands_and_errors(pg_dsn, llm):
    assert run_cli(pg_dsn, "encode", "Hello world", "--model", "cli").stdout.split() == ["15496", "995"]
    assert run_cli(pg_dsn, "decode", "15496", "995", "--model", "cli").stdout == "Hello world\n"
    assert "cli\t" in run_cli(pg_dsn, "models").stdout
    r = run_cli(pg_dsn, "generate", "x", "--model", "nope")
    assert r.returncode == 1 and 'model "nope" does not exist' in r.stderr
    r = run_cli(pg_dsn, "generate", "x", "--model", "cli", "--topp", "2")
    assert r.returncode == 1 and "topp" in r.stderr
