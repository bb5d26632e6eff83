"""`python -m rplat.cli`: the same as the `rplat` command."""

from rplat.cli import main

main()
