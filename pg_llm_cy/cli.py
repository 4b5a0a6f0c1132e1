"""pg_llm's command line.

    python -m pg_llm_cy generate "Once upon a time" [--stream] [--model M] ...
    python -m pg_llm_cy generate --interactive          # a prompt per line, /help for commands
    python -m pg_llm_cy generate --file prompts.txt > completions.txt   # batched, a line each
    python -m pg_llm_cy import-hf ./gpt2 --model gpt2-small   # a HuggingFace GPT-2, with its tokenizer
    python -m pg_llm_cy encode "some text"
    python -m pg_llm_cy decode 15496 995
    python -m pg_llm_cy models
    python -m pg_llm_cy train --model M --steps 1000 [--batch-size 8 --learning-rate 6e-4 ...]

The server comes from --dsn, else $PG_LLM_DSN, else libpq's environment
(PGHOST, PGPORT, PGDATABASE, PGUSER).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import psycopg

from pg_llm_cy.client import TRAIN_ARGS, Client, TrainProgress, default_dsn

_TRAIN_TYPES = {"batch_size": int, "block_size": int, "learning_rate": float, "min_lr": float,
                "warmup_iters": int, "lr_decay_iters": int, "weight_decay": float, "beta1": float,
                "beta2": float, "grad_clip": float, "gradient_accumulation_steps": int,
                "dropout": float, "eval_interval": int, "eval_iters": int, "seed": int,
                "max_seconds": float, "checkpoint_interval": int, "dataset": str,
                "log_interval": int, "eps": float}


def _generation_args(p):
    p.add_argument("--model", help="model name (default: the server's pg_llm.default_model)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0, help="0 is greedy")
    p.add_argument("--topk", type=int, default=50, help="0 turns top-k off")
    p.add_argument("--topp", type=float, default=0.95, help="1 turns top-p off")
    p.add_argument("--seed", type=int, help="the same seed gives the same text")
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--eos-token", type=int)
    p.add_argument("--stop", action="append", help="stop before this text (repeatable)")
    p.add_argument("--truncate", action="store_true",
                   help="keep the end of a prompt too long for the model's context")


def _gen_kwargs(a):
    return dict(max_tokens=a.max_tokens, temperature=a.temperature, topk=a.topk, topp=a.topp,
                model=a.model, seed=a.seed, repetition_penalty=a.repetition_penalty,
                eos_token=a.eos_token, stop=a.stop, truncate=a.truncate)


def _run_generate(llm: Client, prompt: str, a, out) -> None:
    if a.stream:
        for ev in llm.stream(prompt, **_gen_kwargs(a)):
            out.write(ev.token)
            out.flush()
        out.write("\n")
    else:
        out.write(llm.generate(prompt, **_gen_kwargs(a)) + "\n")
    out.flush()


# the interactive session's commands: /name value sets a generation setting
SESSION_SETTINGS = {"temperature": ("temperature", float), "topk": ("topk", int), "topp": ("topp", float),
                    "max": ("max_tokens", int), "max_tokens": ("max_tokens", int), "model": ("model", str),
                    "seed": ("seed", int), "stream": ("stream", lambda v: v.lower() in ("on", "1", "true", "yes"))}
SESSION_HELP = """commands:
  /temperature 0.8   /topk 40   /topp 0.95   /max 100   /model NAME   /seed 1   /stream on|off
  /settings          show them        /help   this        /quit   (or Ctrl-D)
Ctrl-C stops the text being generated; the session goes on."""


def _readline_history():
    """Line editing and a history kept in ~/.pg_llm_history, where readline exists."""
    try:
        import atexit
        import readline
    except ImportError:
        return
    path = os.path.join(os.path.expanduser("~"), ".pg_llm_history")
    try:
        readline.read_history_file(path)
    except OSError:
        pass
    readline.set_history_length(1000)
    atexit.register(lambda: _save_history(readline, path))


def _save_history(readline, path):
    try:
        readline.write_history_file(path)
    except OSError:
        pass


def _session_command(line: str, a, out) -> bool:
    """Run a /command; False for /quit."""
    name, _, value = line[1:].strip().partition(" ")
    if name in ("quit", "exit", "q"):
        return False
    if name in ("help", "?", ""):
        out.write(SESSION_HELP + "\n")
    elif name == "settings":
        out.write("  ".join(f"{k} {getattr(a, k)}" for k in
                            ("model", "temperature", "topk", "topp", "max_tokens", "seed", "stream")) + "\n")
    elif name in SESSION_SETTINGS:
        attr, conv = SESSION_SETTINGS[name]
        try:
            setattr(a, attr, conv(value.strip()) if value.strip() else None)
            out.write(f"{attr} = {getattr(a, attr)}\n")
        except ValueError:
            out.write(f"/{name}: not a value: {value!r}\n")
    else:
        out.write(f"unknown command /{name}; /help lists them\n")
    return True


def interactive(llm: Client, a, stdin=sys.stdin, out=sys.stdout) -> int:
    """A prompt per line until Ctrl-D or /quit.  An error is reported and the
    session goes on (a lost connection is opened again); Ctrl-C stops the
    generation under way (psycopg cancels the statement) or clears the line."""
    tty = stdin.isatty()
    if tty:
        _readline_history()
        out.write("pg_llm: type a prompt and press Enter; /help for commands, Ctrl-D to quit\n")
    while True:
        try:
            if tty:
                line = input("> ")
            else:
                line = stdin.readline()
                if not line:
                    return 0
                line = line.rstrip("\n")
        except EOFError:
            out.write("\n")
            return 0
        except KeyboardInterrupt:
            out.write("\n")
            continue
        if not line.strip():
            continue
        if line.startswith("/"):
            if not _session_command(line, a, out):
                return 0
            continue
        try:
            _run_generate(llm, line, a, out)
        except KeyboardInterrupt:
            out.write("\n[stopped]\n")
        except psycopg.Error as e:
            out.write(f"error: {e.diag.message_primary or e}\n")
            if e.diag.message_hint:
                out.write(f"hint: {e.diag.message_hint}\n")
        out.flush()
        if llm.conn.closed or llm.conn.broken:
            llm.reconnect()


def escape_line(text: str) -> str:
    """A completion on one line: backslash, newline and carriage return
    written as \\\\, \\n and \\r."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def progress_bar(frac: float, width: int = 24) -> str:
    filled = int(width * min(frac, 1.0))
    return "#" * filled + "-" * (width - filled)


class LiveLine:
    """A progress line on stderr, redrawn in place; close() ends it."""

    def close(self) -> None:
        self.out.write("\n")
        self.out.flush()


class BatchBar(LiveLine):
    """The live line of a batched generation: a bar, prompts done, speed, ETA."""

    def __init__(self, out=sys.stderr):
        self.out, self.t0 = out, time.time()

    def __call__(self, done: int, total: int) -> None:
        elapsed = time.time() - self.t0
        eta = elapsed / max(done, 1) * (total - done)
        self.out.write(f"\r[{progress_bar(done / max(total, 1))}] {done}/{total} prompts "
                       f"{done / max(elapsed, 1e-9):.1f}/s ETA {eta:.0f}s ")
        self.out.flush()


def cmd_generate_file(llm: Client, a, out=None) -> int:
    """A prompt per line of --file (- for stdin) -> a completion per line, in
    order; an empty line gives an empty line.  Prompts go to
    llm_generate_batch in chunks of --chunk-size, with a progress bar."""
    out = out or sys.stdout
    if a.file == "-":
        data = sys.stdin.read()
    else:
        with open(a.file, encoding="utf-8", newline="") as f:
            data = f.read()
    # lines end at \n (or \r\n) only: other separators are prompt text
    lines = [line[:-1] if line.endswith("\r") else line for line in data.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()
    wanted = [i for i, line in enumerate(lines) if line]
    bar = None if a.quiet else BatchBar()
    try:
        done = llm.generate_batch([lines[i] for i in wanted], chunk_size=a.chunk_size, progress=bar,
                                  **_gen_kwargs(a))
    finally:
        if bar is not None:
            bar.close()
    completions = [""] * len(lines)
    for i, text in zip(wanted, done):
        completions[i] = text
    for text in completions:
        out.write(escape_line(text) + "\n")
    out.flush()
    return 0


def cmd_generate(llm: Client, a) -> int:
    if a.file is not None:
        if a.prompt is not None or a.interactive or a.stream:
            print("generate: --file takes no prompt, --interactive or --stream", file=sys.stderr)
            return 2
        return cmd_generate_file(llm, a)
    if a.interactive:
        return interactive(llm, a)
    if a.prompt is None:
        print("generate: give a prompt, or --interactive", file=sys.stderr)
        return 2
    _run_generate(llm, a.prompt, a, sys.stdout)
    return 0


def cmd_import_hf(llm: Client, a) -> int:
    from pg_llm_cy.hf_import import import_hf
    r = import_hf(llm.conn, a.source, a.model, tokenizer=not a.no_tokenizer)
    cfg = r["config"]
    tok = f", tokenizer of {r['tokenizer'][0]} tokens and {r['tokenizer'][1]} merges" if r["tokenizer"] else ""
    print(f"imported {r['params']:,} parameters into model {a.model} (n_layer {cfg.n_layer}, n_head {cfg.n_head}, "
          f"n_embd {cfg.n_embd}, n_positions {cfg.n_positions}, vocab {cfg.vocab}){tok} from {r['path']}")
    return 0


class TrainBar(LiveLine):
    """The live line of a training run: a bar, the step, loss, lr, speed, ETA;
    evaluations are kept as lines of their own."""

    def __init__(self, n_steps: int, out=sys.stderr):
        self.n, self.out, self.first, self.t0 = max(n_steps, 1), out, None, time.time()

    def __call__(self, ev: TrainProgress) -> None:
        if self.first is None:
            self.first = ev.step - 1
        done = ev.step - self.first
        bar = progress_bar(done / self.n)
        eta = (time.time() - self.t0) / max(done, 1) * (self.n - done)
        line = (f"\r[{bar}] {done}/{self.n} step {ev.step} loss {ev.loss:.4f} lr {ev.lr:.2e} "
                f"{ev.tokens_per_s:.0f} tok/s ETA {eta:.0f}s ")
        self.out.write(line)
        if ev.val_loss is not None:
            self.out.write(f"\n  step {ev.step}: val loss {ev.val_loss:.4f}, "
                           f"val perplexity {ev.val_perplexity:.2f}\n")
        self.out.flush()


def cmd_train(llm: Client, a) -> int:
    hyper = {k: getattr(a, k) for k in TRAIN_ARGS if getattr(a, k) is not None}
    bar = None if a.quiet else TrainBar(a.steps)
    try:
        last = llm.train(a.steps, model=a.model, progress=bar, **hyper)
    finally:
        if bar is not None:
            bar.close()
    if last:
        val = f", val loss {last['val_loss']:.4f}" if last["val_loss"] is not None else ""
        print(f"trained {a.model or 'the default model'} to step {last['step']}: "
              f"loss {last['loss']:.4f}{val}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pg_llm_cy", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dsn", default=None, help="libpq connection string")
    sub = ap.add_subparsers(dest="cmd", required=True)

    g = sub.add_parser("generate", help="generate text after a prompt")
    g.add_argument("prompt", nargs="?")
    g.add_argument("--stream", action="store_true", help="print tokens as they arrive")
    g.add_argument("--interactive", action="store_true", help="read prompts from stdin, one per line")
    g.add_argument("--file", help="prompts, one per line (- for stdin): a completion per line on "
                                  "stdout, newlines in it as \\n; decoded together (llm_generate_batch)")
    g.add_argument("--chunk-size", type=int, default=256,
                   help="prompts per llm_generate_batch call with --file (default 256)")
    g.add_argument("--quiet", action="store_true", help="no progress bar with --file")
    _generation_args(g)

    b = sub.add_parser("beam", help="beam search")
    b.add_argument("prompt")
    b.add_argument("--model")
    b.add_argument("--beam-width", type=int, default=4)
    b.add_argument("--max-tokens", type=int, default=32)
    b.add_argument("--length-penalty", type=float, default=1.0)

    h = sub.add_parser("import-hf", help="a HuggingFace GPT-2 (directory, cached file or hub name) "
                                        "into a model, with its tokenizer")
    h.add_argument("source", help="a HuggingFace directory, a file in one, or a hub name (online)")
    h.add_argument("--model", required=True, help="the model to create or replace")
    h.add_argument("--no-tokenizer", action="store_true", help="leave the model's tokenizer as it is")

    e = sub.add_parser("encode", help="token ids of a text")
    e.add_argument("text")
    e.add_argument("--model")
    d = sub.add_parser("decode", help="text of token ids")
    d.add_argument("ids", nargs="+", type=int)
    d.add_argument("--model")
    sub.add_parser("models", help="list the models")

    t = sub.add_parser("train", help="train on llm_dataset (CALL llm_train_run) with a progress bar",
                       description="Hyper-parameters not given take llm_train_run's defaults.")
    t.add_argument("--model")
    t.add_argument("--steps", type=int, required=True)
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    for name in TRAIN_ARGS:
        t.add_argument("--" + name.replace("_", "-"), dest=name, type=_TRAIN_TYPES[name])
    return ap


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    try:
        with Client(a.dsn if a.dsn is not None else default_dsn()) as llm:
            if a.cmd == "generate":
                return cmd_generate(llm, a)
            if a.cmd == "beam":
                for beam in llm.beam_search(a.prompt, a.beam_width, a.max_tokens, a.model,
                                            a.length_penalty):
                    print(f"{beam.rank}\t{beam.score:.4f}\t{beam.text}")
                return 0
            if a.cmd == "encode":
                print(" ".join(str(i) for i in llm.encode(a.text, a.model)))
                return 0
            if a.cmd == "decode":
                print(llm.decode(a.ids, a.model))
                return 0
            if a.cmd == "train":
                return cmd_train(llm, a)
            if a.cmd == "import-hf":
                return cmd_import_hf(llm, a)
            if a.cmd == "models":
                for model, n_params, weights, tok in llm.models():
                    print(f"{model}\t{n_params}\tweights={'yes' if weights else 'no'}\t"
                          f"tokenizer={'yes' if tok else 'no'}")
                return 0
    except psycopg.Error as e:
        print(f"pg_llm: {e.diag.message_primary or e}", file=sys.stderr)
        if e.diag.message_hint:
            print(f"hint: {e.diag.message_hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if a.cmd == "train":
            print("pg_llm: training interrupted; the model keeps its last write-back "
                  "(every --checkpoint-interval steps)", file=sys.stderr)
        return 130
    return 2
