"""The build: pg_llm.so has no Python symbols and exports only its fmgr
entry points; AVX-512 code exists only where it is picked at run time, so
the default build runs on any x86-64-v3 CPU; the thread-count setting works."""
import os
import re
import subprocess

import pytest

from conftest import pg_config_path
from pg_llm_cy import _kernels


def installed_so():
    libdir = subprocess.check_output([pg_config_path(), "--pkglibdir"], text=True).strip()
    path = os.path.join(libdir, "pg_llm.so")
    assert os.path.exists(path), f"{path} missing: run make install PG_CONFIG=..."
    return path


def test_no_python_symbols():
    out = subprocess.check_output(["nm", "-D", "--undefined-only", installed_so()], text=True)
    py = [line for line in out.splitlines() if re.search(r"\s_*Py", line)]
    assert not py, py


def test_exports_only_fmgr_entry_points():
    out = subprocess.check_output(["nm", "-D", "--defined-only", installed_so()], text=True)
    names = [line.split()[-1] for line in out.splitlines() if line.strip()]
    odd = [n for n in names if not (n in ("Pg_magic_func", "_PG_init") or n.startswith("pg_llm_")
                                    or n.startswith("pg_finfo_pg_llm_"))]
    assert not odd, odd
    assert "pg_llm_matmul" in names


def functions_using_zmm(path):
    """Names of the functions whose machine code touches a zmm register."""
    out = subprocess.check_output(["objdump", "-d", "--no-show-raw-insn", path], text=True)
    users, current = set(), None
    for line in out.splitlines():
        m = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if m:
            current = m.group(1)
        elif "%zmm" in line and current:
            users.add(current)
    return users


@pytest.mark.parametrize("which", ["server", "python"])
def test_avx512_only_in_dispatched_kernels(which):
    path = installed_so() if which == "server" else _kernels.__file__
    users = functions_using_zmm(path)
    assert users <= {"pgllm_micro_avx512"}, users
    assert "pgllm_micro_avx512" in users


def test_num_threads_setting(conn):
    conn.execute("set pg_llm.num_threads = 1")
    assert "threads 1;" in conn.execute("select pg_llm_info()").fetchone()[0]
    conn.execute("set pg_llm.num_threads = 2")
    assert "threads 2;" in conn.execute("select pg_llm_info()").fetchone()[0]
    conn.execute("reset pg_llm.num_threads")


def test_num_threads_is_capped_at_the_cpus(conn):
    cpus = len(os.sched_getaffinity(0))
    notices = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary))
    try:
        conn.execute("set pg_llm.num_threads = 100")
        assert conn.execute("show pg_llm.num_threads").fetchone()[0] == str(cpus)
        assert f"pg_llm.num_threads 100 is more than the {cpus} CPUs this server may use: set to {cpus}" in notices
        assert f"threads {cpus};" in conn.execute("select pg_llm_info()").fetchone()[0]
    finally:
        conn.execute("reset pg_llm.num_threads")
