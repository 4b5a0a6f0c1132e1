"""A psycopg 3 client for pg_llm: generation (whole, streamed, beam search),
tokenizer, logits.  Everything runs in the database; this only calls SQL.

    >>> from pg_llm_cy.client import Client
    >>> llm = Client("dbname=postgres", model="gpt2-small")
    >>> llm.generate("Once upon a time", max_tokens=20, temperature=0)
    >>> for ev in llm.stream("Once upon a time"):
    ...     print(ev.token, end="", flush=True)
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np
import psycopg


@dataclass
class StreamEvent:
    """One generated token, as llm_generate_stream returns it."""
    step: int
    token_id: int
    token: str          # text added by this token (held back while a character is incomplete)
    text: str           # all text generated so far
    is_complete: bool


@dataclass
class Beam:
    rank: int
    score: float
    token_ids: list
    text: str


GENERATE_ARGS = ("prompt", "max_tokens", "temperature", "topk", "topp", "model_name",
                 "eos_token", "seed", "repetition_penalty", "stop")


def default_dsn() -> str:
    """PG_LLM_DSN, else libpq's environment (PGHOST, PGDATABASE, ...)."""
    return os.environ.get("PG_LLM_DSN", "")


class Client:
    def __init__(self, conn: "psycopg.Connection | str | None" = None, model: Optional[str] = None):
        if conn is None or isinstance(conn, str):
            self.conn = psycopg.connect(conn if conn is not None else default_dsn(), autocommit=True)
            self._own = True
        else:
            self.conn = conn
            self._own = False
        self.model = model

    def close(self):
        if self._own:
            self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- helpers ----------------------------------------------------------
    def _model(self, model):
        return model if model is not None else self.model

    @staticmethod
    def _gen_params(prompt, max_tokens, temperature, topk, topp, model, eos_token, seed,
                    repetition_penalty, stop):
        return (prompt, max_tokens, float(temperature), topk, float(topp), model, eos_token, seed,
                float(repetition_penalty), list(stop) if stop is not None else None)

    _GEN_SQL = ("%s, %s, %s::float8, %s, %s::float8, %s, %s, %s, %s::float8, %s::text[]")

    # -- generation -------------------------------------------------------
    def generate(self, prompt: str, max_tokens: int = 64, temperature: float = 1.0, topk: int = 50,
                 topp: float = 0.95, model: Optional[str] = None, eos_token: Optional[int] = None,
                 seed: Optional[int] = None, repetition_penalty: float = 1.0,
                 stop: Optional[Sequence[str]] = None) -> str:
        """The text generated after prompt (temperature 0: greedy)."""
        params = self._gen_params(prompt, max_tokens, temperature, topk, topp, self._model(model),
                                  eos_token, seed, repetition_penalty, stop)
        return self.conn.execute(f"SELECT llm_generate({self._GEN_SQL})", params).fetchone()[0]

    def stream(self, prompt: str, max_tokens: int = 64, temperature: float = 1.0, topk: int = 50,
               topp: float = 0.95, model: Optional[str] = None, eos_token: Optional[int] = None,
               seed: Optional[int] = None, repetition_penalty: float = 1.0,
               stop: Optional[Sequence[str]] = None) -> Iterator[StreamEvent]:
        """Yield tokens as the server produces them.

        llm_generate_stream is a value-per-call function: called in the SELECT
        list and read through a server-side cursor one row at a time, each row
        is computed when it is fetched."""
        params = self._gen_params(prompt, max_tokens, temperature, topk, topp, self._model(model),
                                  eos_token, seed, repetition_penalty, stop)
        sql = ("SELECT (r).step, (r).token_id, (r).token, (r).text, (r).is_complete FROM "
               f"(SELECT llm_generate_stream({self._GEN_SQL}) AS r OFFSET 0) AS s")
        with self.conn.transaction():
            with self.conn.cursor(name="pg_llm_stream") as cur:
                cur.itersize = 1
                cur.execute(sql, params)
                while True:
                    row = cur.fetchone()
                    if row is None:
                        break
                    ev = StreamEvent(*row)
                    yield ev
                    if ev.is_complete:
                        break

    def beam_search(self, prompt: str, beam_width: int = 4, max_tokens: int = 32,
                    model: Optional[str] = None, length_penalty: float = 1.0,
                    eos_token: Optional[int] = None) -> list:
        rows = self.conn.execute(
            "SELECT rank, score, token_ids, text FROM llm_beam_search(%s, %s, %s, %s, %s::float8, %s)",
            (prompt, beam_width, max_tokens, self._model(model), float(length_penalty), eos_token),
        ).fetchall()
        return [Beam(*r) for r in rows]

    # -- tokenizer and scores ---------------------------------------------
    def encode(self, text: str, model: Optional[str] = None) -> list:
        return self.conn.execute("SELECT llm_encode(%s, %s)", (text, self._model(model))).fetchone()[0]

    def decode(self, ids: Sequence[int], model: Optional[str] = None) -> str:
        return self.conn.execute("SELECT llm_decode(%s::int[], %s)",
                                 ([int(i) for i in ids], self._model(model))).fetchone()[0]

    def logits(self, ids: Sequence[int], model: Optional[str] = None) -> np.ndarray:
        """(T, vocab) float32 logits of every position."""
        raw = self.conn.execute("SELECT llm_logits(%s::int[], %s)",
                                ([int(i) for i in ids], self._model(model))).fetchone()[0]
        return np.frombuffer(raw, np.float32).reshape(len(ids), -1)

    def perplexity(self, text: str, model: Optional[str] = None) -> float:
        return self.conn.execute("SELECT llm_perplexity(%s, %s)",
                                 (text, self._model(model))).fetchone()[0]

    def models(self) -> list:
        return self.conn.execute("SELECT model, n_params, has_weights, has_tokenizer FROM llm_models "
                                 "ORDER BY model").fetchall()
