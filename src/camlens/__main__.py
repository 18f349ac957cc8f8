"""``python -m camlens``: the ``camlens`` command (also what ``torchrun -m camlens`` runs)."""

from camlens.cli.app import main

main()
