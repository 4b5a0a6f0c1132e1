"""A psycopg 3 client for pg_llm: generation (whole, streamed, beam search),
batched generation, tokenizer, logits, training with live progress.  Everything runs in the
database; this only calls SQL.

    >>> from pg_llm_cy.client import Client
    >>> llm = Client("dbname=postgres", model="gpt2-small")
    >>> llm.generate("Once upon a time", max_tokens=20, temperature=0)
    >>> for ev in llm.stream("Once upon a time"):
    ...     print(ev.token, end="", flush=True)
    >>> llm.generate_batch(["Once upon a time", "ROMEO:"], max_tokens=20)
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import psycopg
import psycopg.rows


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


@dataclass
class TrainProgress:
    """One step of a training run, as its NOTICE reports it."""
    step: int                   # the model's optimizer step after this one
    loss: float
    lr: float
    tokens_per_s: float
    grad_norm: Optional[float] = None
    val_loss: Optional[float] = None
    val_perplexity: Optional[float] = None


# llm_train_run's keyword arguments (nanoGPT's names)
TRAIN_ARGS = ("batch_size", "block_size", "learning_rate", "min_lr", "warmup_iters",
              "lr_decay_iters", "weight_decay", "beta1", "beta2", "grad_clip",
              "gradient_accumulation_steps", "dropout", "eval_interval", "eval_iters", "seed",
              "max_seconds", "checkpoint_interval", "dataset", "log_interval", "eps")
_FLOAT_ARGS = {"learning_rate", "min_lr", "weight_decay", "beta1", "beta2", "grad_clip",
               "dropout", "max_seconds", "eps"}
_STEP_NOTICE = re.compile(r"^step (\d+) \| (.*)$")


def parse_train_notice(message: str) -> Optional[TrainProgress]:
    """The TrainProgress of a training NOTICE ("step 10 | loss 5.1234 | ..."), else None."""
    m = _STEP_NOTICE.match(message)
    if not m:
        return None
    fields = {}
    for part in m.group(2).split(" | "):
        words = part.split(" ")
        if part.endswith("tokens/s"):
            fields["tokens_per_s"] = float(words[0])
        else:
            fields["_".join(words[:-1])] = float(words[-1])
    return TrainProgress(step=int(m.group(1)), loss=fields["loss"], lr=fields["lr"],
                         tokens_per_s=fields.get("tokens_per_s", 0.0),
                         grad_norm=fields.get("grad_norm"), val_loss=fields.get("val_loss"),
                         val_perplexity=fields.get("val_perplexity"))


GENERATE_ARGS = ("prompt", "max_tokens", "temperature", "topk", "topp", "model",
                 "eos_token", "seed", "repetition_penalty", "stop")

# the most prompts one llm_generate_batch call takes (the server's bound)
BATCH_MAX_PROMPTS = 1_000_000


def default_dsn() -> str:
    """PG_LLM_DSN, else libpq's environment (PGHOST, PGDATABASE, ...)."""
    return os.environ.get("PG_LLM_DSN", "")


class Client:
    def __init__(self, conn: "psycopg.Connection | str | None" = None, model: Optional[str] = None):
        if conn is None or isinstance(conn, str):
            self._dsn = conn if conn is not None else default_dsn()
            self.conn = psycopg.connect(self._dsn, autocommit=True)
            self._own = True
        else:
            self._dsn = None
            self.conn = conn
            self._own = False
        self.model = model

    def reconnect(self):
        """A new connection after the server closed this one (a restart, an
        administrator's pg_terminate_backend)."""
        if not self._own:
            raise psycopg.OperationalError("the connection is lost, and it is not this client's own")
        self.conn = psycopg.connect(self._dsn, autocommit=True)

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
                    repetition_penalty, stop, truncate):
        return (prompt, max_tokens, float(temperature), topk, float(topp), model, eos_token, seed,
                float(repetition_penalty), list(stop) if stop is not None else None, bool(truncate))

    # llm_generate's arguments after the prompt, and with it
    _GEN_OPTS_SQL = "%s, %s::float8, %s, %s::float8, %s, %s, %s, %s::float8, %s::text[], %s"
    _GEN_SQL = "%s, " + _GEN_OPTS_SQL

    # -- generation -------------------------------------------------------
    def generate(self, prompt: str, max_tokens: int = 64, temperature: float = 1.0, topk: int = 50,
                 topp: float = 0.95, model: Optional[str] = None, eos_token: Optional[int] = None,
                 seed: Optional[int] = None, repetition_penalty: float = 1.0,
                 stop: Optional[Sequence[str]] = None, truncate: bool = False) -> str:
        """The text generated after prompt (temperature 0: greedy; truncate:
        keep the end of a prompt too long for the model's context)."""
        params = self._gen_params(prompt, max_tokens, temperature, topk, topp, self._model(model),
                                  eos_token, seed, repetition_penalty, stop, truncate)
        return self.conn.execute(f"SELECT llm_generate({self._GEN_SQL})", params).fetchone()[0]

    def generate_batch(self, prompts: Sequence[str], max_tokens: int = 64, temperature: float = 1.0,
                       topk: int = 50, topp: float = 0.95, model: Optional[str] = None,
                       eos_token: Optional[int] = None, seed: Optional[int] = None,
                       repetition_penalty: float = 1.0, stop: Optional[Sequence[str]] = None,
                       truncate: bool = False, chunk_size: int = BATCH_MAX_PROMPTS,
                       progress: Optional[Callable[[int, int], None]] = None) -> list:
        """generate() of every prompt, decoded together on the server
        (llm_generate_batch): the completions, in prompt order.  Each equals
        generate()'s with the same arguments.  Calls of at most chunk_size
        prompts; progress(done, total) is called after each."""
        if not 1 <= chunk_size <= BATCH_MAX_PROMPTS:
            raise ValueError(f"chunk_size must lie in [1, {BATCH_MAX_PROMPTS}], got {chunk_size}")
        prompts = list(prompts)
        out = []
        for start in range(0, len(prompts), chunk_size):
            chunk = prompts[start:start + chunk_size]
            params = self._gen_params(chunk, max_tokens, temperature, topk, topp, self._model(model),
                                      eos_token, seed, repetition_penalty, stop, truncate)
            rows = self.conn.execute("SELECT ord, completion FROM llm_generate_batch("
                                     f"%s::text[], {self._GEN_OPTS_SQL}) ORDER BY ord", params).fetchall()
            out.extend(r[1] for r in rows)
            if progress is not None:
                progress(len(out), len(prompts))
        return out

    def stream(self, prompt: str, max_tokens: int = 64, temperature: float = 1.0, topk: int = 50,
               topp: float = 0.95, model: Optional[str] = None, eos_token: Optional[int] = None,
               seed: Optional[int] = None, repetition_penalty: float = 1.0,
               stop: Optional[Sequence[str]] = None, truncate: bool = False) -> Iterator[StreamEvent]:
        """Yield tokens as the server produces them.

        llm_generate_stream is a value-per-call function: called in the SELECT
        list and read through a server-side cursor one row at a time, each row
        is computed when it is fetched."""
        params = self._gen_params(prompt, max_tokens, temperature, topk, topp, self._model(model),
                                  eos_token, seed, repetition_penalty, stop, truncate)
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
                    eos_token: Optional[int] = None, truncate: bool = False) -> list:
        rows = self.conn.execute(
            "SELECT rank, score, token_ids, text FROM llm_beam_search(%s, %s, %s, %s, %s::float8, %s, %s)",
            (prompt, beam_width, max_tokens, self._model(model), float(length_penalty), eos_token,
             bool(truncate)),
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

    # -- training -----------------------------------------------------------
    def train(self, n_steps: int, model: Optional[str] = None,
              progress: Optional[Callable[[TrainProgress], None]] = None, **hyper) -> dict:
        """CALL llm_train_run(model, n_steps, **hyper): the run commits every
        step and writes the model back every checkpoint_interval steps.
        progress(TrainProgress) is called as the server reports steps (every
        log_interval steps, 1 unless given, and at every evaluation).
        Returns the run's last llm_train_log row as a dict."""
        model = self._model(model) or self.conn.execute(
            "SELECT current_setting('pg_llm.default_model', true)").fetchone()[0]
        if not model:
            raise ValueError("train: name a model (or set pg_llm.default_model)")
        unknown = set(hyper) - set(TRAIN_ARGS)
        if unknown:
            raise TypeError(f"train: unknown hyper-parameters {sorted(unknown)}; "
                            f"known: {', '.join(TRAIN_ARGS)}")
        if not self.conn.autocommit:
            raise ValueError("train: the connection must be in autocommit mode "
                             "(llm_train_run commits as it goes)")
        if progress is not None:
            hyper.setdefault("log_interval", 1)
        hyper = {k: v for k, v in hyper.items() if v is not None}
        args = "".join(f", {k} => %({k})s" + ("::float8" if k in _FLOAT_ARGS else "")
                       for k in hyper)
        first = self.conn.execute("SELECT coalesce(max(id), 0) FROM llm_train_log").fetchone()[0]

        def on_notice(diag):
            ev = parse_train_notice(diag.message_primary or "")
            if ev is not None and progress is not None:
                progress(ev)

        self.conn.add_notice_handler(on_notice)
        try:
            self.conn.execute(f"CALL llm_train_run(%(model)s, %(n_steps)s{args})",
                              dict(hyper, model=model, n_steps=n_steps))
        finally:
            self.conn.remove_notice_handler(on_notice)
        with self.conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
            last = cur.execute("SELECT step, lr, loss, grad_norm, val_loss, tokens_per_s FROM llm_train_log "
                               "WHERE model = %s AND id > %s ORDER BY id DESC LIMIT 1",
                               (model, first)).fetchone()
        return last or {}

    def evaluate(self, split: str = "val", model: Optional[str] = None, dataset: Optional[str] = None) -> tuple:
        """(loss, perplexity) of the model on every block of a split (dataset
        None: "default", or the only dataset there is)."""
        return tuple(self.conn.execute("SELECT loss, perplexity FROM llm_evaluate(%s, %s, %s)",
                                       (self._model(model), split, dataset)).fetchone())
