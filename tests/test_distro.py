"""The README's install path on the distribution's own PostgreSQL (tox -e
distro: Debian's postgresql-NN and postgresql-server-dev-NN from apt-get,
then `make install` with its pg_config): the extension lands in the
package's directories, PGXS's LLVM bitcode step (Debian builds with
with_llvm=yes) is turned off without anybody editing anything, and a
cluster of the packaged server creates the extension, loads the
tokenizer, trains and generates."""
import os
import subprocess

import psycopg
import pytest

from conftest import pg_config_path
from helpers import create_model, load_tokenizer, sql_value

pytestmark = pytest.mark.distro


def pg_config(*args):
    return subprocess.check_output([pg_config_path(), *args], text=True).strip()


def test_it_is_the_distributions_postgresql():
    assert pg_config("--bindir").startswith("/usr/lib/postgresql/"), pg_config("--bindir")
    assert os.path.exists(os.path.join(pg_config("--pkglibdir"), "pg_llm.so"))
    share = os.path.join(pg_config("--sharedir"), "extension")
    assert os.path.exists(os.path.join(share, "pg_llm.control"))


def test_llvm_bitcode_is_turned_off_cleanly():
    """Debian's PGXS asks for JIT bitcode of every object; pg_llm's Makefile
    turns that off (the kernels are opaque to the JIT), so the build needs
    no clang and installs no .bc files."""
    makefile_global = os.path.join(os.path.dirname(pg_config("--pgxs")), "..", "Makefile.global")
    assert "with_llvm\t= yes" in open(makefile_global).read().replace(" = ", "\t= ")
    bitcode = os.path.join(pg_config("--pkglibdir"), "bitcode")
    assert not os.path.exists(os.path.join(bitcode, "pg_llm")) and \
        not os.path.exists(os.path.join(bitcode, "pg_llm.index.bc"))


def test_create_extension_train_and_generate(conn, data_dir):
    assert sql_value(conn, "SELECT pg_llm_info()").startswith("pg_llm ")
    create_model(conn, "distro", n_layer=1, n_head=2, n_embd=32, n_positions=32)
    load_tokenizer(conn, "distro", data_dir)
    conn.execute("SELECT llm_dataset_from_text('distro', repeat('To be, or not to be. ', 40), 16, 0.1, 'distro')")
    assert sql_value(conn, "SELECT llm_train('distro', 2, batch_size => 2, eval_interval => 0, "
                           "dataset => 'distro')") > 0
    text = sql_value(conn, "SELECT llm_generate('To be', 8, 0, model => 'distro', eos_token => -1)")
    assert text == sql_value(conn, "SELECT llm_generate('To be', 8, 0, model => 'distro', eos_token => -1)")
    assert len(text) > 0
