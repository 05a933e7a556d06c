"""`python -m linearsr.cli …`: the same as the `linearsr` command (handy under torchrun's -m)."""

from . import main

if __name__ == "__main__":
    main(prog_name="linearsr")
