"""Dataset preparation from the client: text files -> llm_dataset blocks.

The text is tokenized by the server (llm_encode, the model's own tokenizer)
in pieces, so that a progress bar can follow; pieces end after a lone
newline between printable characters, where GPT-2's pre-tokenizer always
cuts, so the ids equal those of the whole text at once.  As nanoGPT, the last
val_fraction of the tokens is the validation split; each split is cut into
non-overlapping blocks of block_size tokens with their next-token targets.
"""
from __future__ import annotations

import sys
import time
from typing import Iterable

PIECE = 256 * 1024


def _cut_after(text: str, end: int) -> bool:
    """A lone '\\n' between two printable ASCII characters: the pre-tokenizer
    makes it a token of its own whatever follows (a run of newlines would not
    do: at the end of a piece it would become one token)."""
    def printable(c):
        return " " < c <= "~"
    return text[end - 1] == "\n" and printable(text[end - 2]) and printable(text[end])


def pieces(text: str, size: int = PIECE) -> Iterable[str]:
    """Cut text into pieces of about `size` characters that tokenize to the ids
    of the whole text."""
    start = 0
    while start < len(text):
        end = min(start + size, len(text))
        while end < len(text) and not (end - start >= 2 and _cut_after(text, end)):
            end += 1
        yield text[start:end]
        start = end


class Progress:
    """A one-line progress bar on stderr (no dependency)."""

    def __init__(self, total: int, label: str, stream=sys.stderr):
        self.total, self.label, self.stream = max(total, 1), label, stream
        self.t0 = time.time()

    def update(self, done: int, extra: str = "") -> None:
        frac = min(done / self.total, 1.0)
        bar = "#" * int(30 * frac) + "-" * (30 - int(30 * frac))
        rate = done / max(time.time() - self.t0, 1e-9)
        self.stream.write(f"\r{self.label} [{bar}] {100 * frac:5.1f}% {extra} ({rate / 1e3:.0f}k/s)")
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


def tokenize(conn, model: str, text: str, progress: bool = True) -> list:
    ids: list = []
    bar = Progress(len(text), "tokenizing") if progress else None
    done = 0
    for piece in pieces(text):
        ids.extend(conn.execute("SELECT llm_encode(%s, %s)", (piece, model)).fetchone()[0])
        done += len(piece)
        if bar:
            bar.update(done, f"{len(ids)} tokens")
    if bar:
        bar.close()
    return ids


def insert_blocks(conn, ids: list, block_size: int, split: str, dataset: str) -> int:
    blocks = (len(ids) - 1) // block_size if len(ids) > block_size else 0
    rows = [(dataset, ids[i * block_size:(i + 1) * block_size],
             ids[i * block_size + 1:(i + 1) * block_size + 1], split) for i in range(blocks)]
    with conn.cursor() as cur:
        with cur.copy("COPY llm_dataset (dataset, tokens, target, split) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    return blocks


def prepare(conn, model: str, texts: Iterable[str], block_size: int = 64, val_fraction: float = 0.1,
            dataset: str = "default", replace: bool = False, progress: bool = True) -> tuple:
    """Tokenize the texts (joined) into llm_dataset; returns (train rows, val rows)."""
    if not 0 <= val_fraction < 1:
        raise ValueError("val_fraction must lie in [0, 1)")
    ids = tokenize(conn, model, "".join(texts), progress)
    n_val = int(len(ids) * val_fraction)
    with conn.transaction():
        if replace:
            conn.execute("DELETE FROM llm_dataset WHERE dataset = %s", (dataset,))
        n_train = insert_blocks(conn, ids[:len(ids) - n_val], block_size, "train", dataset)
        n_v = insert_blocks(conn, ids[len(ids) - n_val:], block_size, "val", dataset)
    return n_train, n_v
