"""``python -m mmrobust``: the command line (see :mod:`mmrobust.cli`)."""

from mmrobust.cli import main

main()
