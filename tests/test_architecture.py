"""ARCHITECTURE.md against the tree: its map from SQL functions to C entries
and kernels names every SQL function of the current extension version, each
C entry is defined (PG_FUNCTION_INFO_V1) in the file the map names, and each
kernel it names is declared in pyx/pg_llm_kernels.h.  No server needed."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def current_version():
    control = (ROOT / "pg_llm.control").read_text()
    return re.search(r"default_version\s*=\s*'([^']+)'", control).group(1)


def sql_objects():
    """(name, C symbol or None) of every function, procedure and view the
    current version's install script creates."""
    sql = (ROOT / "sql" / f"pg_llm--{current_version()}.sql").read_text()
    found = []
    for m in re.finditer(r"^CREATE (?:OR REPLACE )?(?:FUNCTION|PROCEDURE|VIEW)\s+@extschema@\.(\w+)"
                         r"(.*?);\s*$", sql, re.S | re.M):
        name, rest = m.groups()
        sym = re.search(r"MODULE_PATHNAME'\s*,\s*'(\w+)'", rest)
        found.append((name, sym.group(1) if sym else None))
    return found


def map_rows():
    text = (ROOT / "ARCHITECTURE.md").read_text()
    section = text.split("## SQL functions -> C entry -> kernels", 1)[1]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[1:]]


def test_every_sql_function_is_in_the_map():
    rows = map_rows()
    named = set()
    for cells in rows:
        named |= set(re.findall(r"`(\w+)`", cells[0]))
    objects = sql_objects()
    assert len(objects) > 50, "the install script's functions were not found"
    missing = sorted({name for name, _ in objects} - named)
    assert not missing, f"ARCHITECTURE.md does not map {missing}"


def test_every_c_entry_is_where_the_map_says():
    defined = {}
    for path in (ROOT / "pyx" / "shim").glob("*.c"):
        for sym in re.findall(r"PG_FUNCTION_INFO_V1\((\w+)\)", path.read_text()):
            defined[sym] = path.name
    where = {}
    for cells in map_rows():
        file = re.search(r"\((\w+\.c)\)", cells[1])
        for sym in re.findall(r"`(\w+)`", cells[1]):
            if file:
                where[sym] = file.group(1)
    for name, sym in sql_objects():
        if sym is None:
            continue
        assert sym in where, f"{name}: its C entry {sym} is not in the map"
        assert defined.get(sym) == where[sym], \
            f"{name}: the map puts {sym} in {where[sym]}, it is in {defined.get(sym)}"


def test_every_kernel_in_the_map_exists():
    header = (ROOT / "pyx" / "pg_llm_kernels.h").read_text()
    declared = set(re.findall(r"\b(pgllm_\w+)\s*\(", header))
    named = set()
    for cells in map_rows():
        named |= set(re.findall(r"`(pgllm_\w+)`", cells[2]))
    assert len(named) > 30
    assert not named - declared, f"not kernels of pg_llm_kernels.h: {sorted(named - declared)}"


def test_every_kernel_file_and_shim_file_is_described():
    text = (ROOT / "ARCHITECTURE.md").read_text()
    files = [p.name for p in (ROOT / "pyx").glob("*.pxi")] + \
            [p.name for p in (ROOT / "pyx" / "shim").glob("*.[ch]")]
    missing = [f for f in files if f"| `{f}` |" not in text]
    assert not missing, f"ARCHITECTURE.md does not say what {missing} own"
