"""python -m pg_llm_cy ...: the command-line interface (see pg_llm_cy/cli.py)."""
from pg_llm_cy.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
