"""The README's first command, scripts/demo.sh: offline without the files it
stops at once and says which file to give; with them it builds, starts a
cluster, trains, plots and talks."""
import os
import re
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "scripts", "demo.sh")
NOWHERE = "http://127.0.0.1:9/"     # the discard port: connection refused at once


def demo_env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("PG_LLM_DATA", "PG_LLM_VOCAB", "PG_LLM_MERGES", "PG_LLM_CORPUS")}
    env.update(PG_LLM_DEMO_BUILD=str(tmp_path / "build"), PG_LLM_DOWNLOAD_BASE=NOWHERE,
               PG_LLM_CORPUS_URL=NOWHERE + "input.txt", **extra)
    return env


def test_offline_without_files_stops_at_once_naming_each_file(tmp_path):
    t0 = time.monotonic()
    r = subprocess.run([DEMO], env=demo_env(tmp_path), cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    elapsed = time.monotonic() - t0
    assert r.returncode == 2, r.stdout + r.stderr
    for needed in ("vocab.json", "merges.txt", "tinyshakespeare", "--vocab", "--merges",
                   "--corpus", "PG_LLM_VOCAB", "--data-dir"):
        assert needed in r.stderr, (needed, r.stderr)
    assert "==> " not in r.stdout          # nothing was built or started
    assert not os.path.exists(tmp_path / "build" / "demo-venv")
    assert elapsed < 60, elapsed


def test_a_given_file_that_does_not_exist_is_named(tmp_path, data_dir):
    r = subprocess.run([DEMO, "--data-dir", data_dir, "--vocab", str(tmp_path / "nope.json")],
                       env=demo_env(tmp_path), cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2
    assert f"{tmp_path / 'nope.json'} does not exist" in r.stderr and "--vocab" in r.stderr
    assert "merges.txt:" not in r.stderr and "tinyshakespeare (" not in r.stderr   # found


@pytest.mark.heavy
def test_demo_trains_plots_and_talks(tmp_path, data_dir):
    """The whole demo, with this Python (--no-venv: the package is installed
    here) and the tests' PostgreSQL, run from another directory with a
    relative --data-dir."""
    rel_data = os.path.relpath(data_dir, tmp_path)
    r = subprocess.run([DEMO, "--no-venv", "--data-dir", rel_data, "--minutes", "0.5",
                        "--tokens", "30", "--cleanup", "--pg-config", os.path.abspath(os.environ["PG_CONFIG"])],
                       env=demo_env(tmp_path, PATH=os.path.dirname(sys.executable) + os.pathsep
                                    + os.environ["PATH"]),
                       cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    out = r.stdout
    assert r.returncode == 0, out[-3000:] + r.stderr[-3000:]
    m = re.search(r"(\d+) steps; validation loss ([\d.]+) -> ([\d.]+)", out)
    assert m, out
    steps, before, after = int(m.group(1)), float(m.group(2)), float(m.group(3))
    assert steps >= 5 and before > 10 and after < before - 0.3, (steps, before, after)
    png = re.search(r"loss curve: (\S+\.png)", out).group(1)
    assert os.path.getsize(png) > 10000 and png.startswith(str(tmp_path))
    assert re.search(r"ROMEO:\S*\s*\S+", out.split("streaming text")[1])
    assert "val loss" in r.stderr          # the live progress bar
    assert not os.path.exists(f"/tmp/pg_llm_demo_{os.getuid()}")   # --cleanup
