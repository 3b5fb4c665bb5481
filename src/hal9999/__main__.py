"""``python -m hal9999`` runs the ``hal`` command."""

from hal9999.cli.entry import main

main()
