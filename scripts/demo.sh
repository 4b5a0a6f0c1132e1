#!/bin/sh
# pg_llm's demo: builds everything it needs, trains a small GPT-2 on
# tinyshakespeare inside PostgreSQL and streams text from it.
#   scripts/demo.sh [--minutes 3] [--data-dir DIR | --vocab F --merges F --corpus F]
#                   [--dsn DSN | --pg-config PATH] [--cleanup] [--stop]
# See scripts/demo.py --help.  Needs python3 with venv, gcc, make and zlib's
# headers: as root on Debian/Ubuntu it installs what is missing with apt-get.
set -e
here="$(cd "$(dirname "$0")" && pwd)"
need=""
command -v gcc >/dev/null 2>&1 || need="$need gcc"
command -v make >/dev/null 2>&1 || need="$need make"
[ -f /usr/include/zlib.h ] || need="$need zlib1g-dev"
python3 -c 'import venv, ensurepip' 2>/dev/null || need="$need python3-venv"
if [ -n "$need" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && apt-get install -y -qq $need >/dev/null
    else
        echo "pg_llm demo: please install:$need" >&2
        exit 2
    fi
fi
exec python3 "$here/demo.py" "$@"
