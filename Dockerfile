# pg_llm on the official PostgreSQL 16 image (x86-64).
# Not built by the test suite: the test machine has no Docker.
#
#   docker build -t pg_llm .
#   docker run --name pg_llm -e POSTGRES_PASSWORD=secret -p 5432:5432 -d pg_llm
#   psql -h localhost -U postgres -c 'SELECT pg_llm_info()'
#
# The extension is created in $POSTGRES_DB when the container initialises its
# data directory.  Put weights and tokenizer files into a volume the server
# can read (e.g. -v $PWD/models:/srv/pg_llm) or send the tokenizer from the
# client (scripts/ingest_tokenizer.py).

# --- build: compiler, server headers, Cython and numpy (build time only) ---
FROM postgres:16-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        postgresql-server-dev-16 gcc make binutils zlib1g-dev python3 python3-dev python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/build-venv \
 && /opt/build-venv/bin/pip install --no-cache-dir cython numpy
COPY . /src
WORKDIR /src
RUN make clean PG_CONFIG=/usr/lib/postgresql/16/bin/pg_config \
 && make install DESTDIR=/out PG_CONFIG=/usr/lib/postgresql/16/bin/pg_config \
        PG_LLM_PYTHON=/opt/build-venv/bin/python

# --- run: the official image plus pg_llm.so, its SQL scripts and OpenMP ---
FROM postgres:16-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /
RUN echo 'CREATE EXTENSION IF NOT EXISTS pg_llm;' > /docker-entrypoint-initdb.d/10-pg_llm.sql
