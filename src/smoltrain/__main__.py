"""`python -m smoltrain ...` (and `torchrun -m smoltrain ...`) runs the CLI."""

from smoltrain.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
