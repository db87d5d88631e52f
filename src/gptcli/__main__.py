"""`python -m gptcli` (also what `torchrun -m gptcli` runs)."""

from gptcli.cli import main

main()
