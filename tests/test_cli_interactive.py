"""python -m pg_llm_cy generate --interactive: a prompt per line, commands
that change the settings for the next prompts, an error reported without
ending the session, and Ctrl-C stopping the text being generated -- the
session then goes on with the next line."""
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import create_model, load_tokenizer


@pytest.fixture(scope="module")
def model(conn, data_dir):
    # wide enough that 900 tokens take seconds: a generation to interrupt
    create_model(conn, "cli_i", n_layer=4, n_head=4, n_embd=256, n_positions=1024, seed=3)
    load_tokenizer(conn, "cli_i", data_dir)
    yield "cli_i"
    conn.execute("SELECT llm_drop_model('cli_i')")


def session(pg_dsn, *args):
    env = dict(os.environ, PG_LLM_DSN=pg_dsn, PYTHONUNBUFFERED="1")
    # SIGINT as a terminal delivers it: a job started with `&` by a
    # non-interactive shell (as CI may run the suite) inherits SIGINT ignored,
    # and Python then never installs its KeyboardInterrupt handler
    return subprocess.Popen([sys.executable, "-m", "pg_llm_cy", "generate", "--interactive", *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd="/",
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_commands_and_errors_do_not_end_the_session(pg_dsn, model):
    p = session(pg_dsn, "--model", model, "--max-tokens", "3", "--temperature", "0")
    out, err = p.communicate("Hello\n/max 5\n/temperature 0.5\n/settings\n/model no_such_model\n"
                             "Hello\n/model cli_i\n/bogus\n/help\nHello\n/quit\nnot read\n", timeout=120)
    assert p.returncode == 0, err
    lines = out.splitlines()
    assert "max_tokens = 5" in lines and "temperature = 0.5" in lines
    assert any(l.startswith("model cli_i  temperature 0.5  topk 50") for l in lines), out
    assert 'error: model "no_such_model" does not exist' in out
    assert "unknown command /bogus; /help lists them" in out
    assert "/temperature 0.8" in out                  # the help
    # the first prompt, and the last after the error and the help, generated text
    assert lines[0].strip() and lines[1] == "max_tokens = 5"
    help_end = max(i for i, l in enumerate(lines) if l.startswith("Ctrl-C stops"))
    assert len(lines) == help_end + 2 and lines[-1].strip(), out      # "/quit": nothing after

def wait_until_generating(conn, timeout=30):
    """Until the session's llm_generate call is running in its backend."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if conn.execute("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                        "AND query LIKE '%%llm_generate%%' AND pid <> pg_backend_pid()").fetchone()[0]:
            return
        time.sleep(0.02)
    raise AssertionError("the generation did not start")


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_ctrl_c_stops_the_generation_not_the_session(pg_dsn, conn, model, stream):
    p = session(pg_dsn, "--model", model, "--max-tokens", "1000", "--temperature", "0.8",
                "--eos-token", "-1", *(["--stream"] if stream else []))
    p.stdin.write("Once upon a time\n")
    p.stdin.flush()
    if stream:
        first = p.stdout.read(1)        # the first token is out: inside the generation
    else:
        first = ""
        wait_until_generating(conn)
        time.sleep(0.2)
    t0 = time.time()
    p.send_signal(signal.SIGINT)
    p.stdin.write("/max 2\nHello\n")
    p.stdin.close()
    out = first + p.stdout.read()
    p.wait(60)
    assert p.returncode == 0, p.stderr.read()
    assert "[stopped]" in out, out
    after = out.split("[stopped]")[1]
    assert "max_tokens = 2" in after and after.strip().splitlines()[-1]      # and generated again
    assert time.time() - t0 < 30
