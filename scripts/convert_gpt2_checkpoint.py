#!/usr/bin/env python3
"""Turn a HuggingFace GPT-2 checkpoint into an archive pg_llm_import_npz reads.

    python scripts/convert_gpt2_checkpoint.py CHECKPOINT_DIR out.npz
    python scripts/convert_gpt2_checkpoint.py gpt2-medium gpt2-medium.safetensors   # hub name, online

CHECKPOINT_DIR holds config.json and model.safetensors or pytorch_model.bin
(any GPT-2 size).  Then, in SQL:
    SELECT pg_llm_import_npz('/path/out.npz', 'gpt2-small');
"""
import argparse
import os
import sys

# the installed pg_llm_cy first; the source tree when it is not installed
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pg_llm_cy.convert import convert  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="checkpoint directory, or a hub model name when online")
    ap.add_argument("output", help="output path, .npz or .safetensors")
    a = ap.parse_args()
    cfg = convert(a.checkpoint, a.output)
    print(f"{a.output}: n_layer={cfg.n_layer} n_head={cfg.n_head} n_embd={cfg.n_embd} "
          f"n_positions={cfg.n_positions} vocab={cfg.vocab}")


if __name__ == "__main__":
    main()
