"""`python -m app.cli` is the `textclf` command."""

from app.cli import main

main()
