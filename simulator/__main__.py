"""`python -m simulator`: parse the command line, run, exit with the run's status."""

from simulator.cli import main

raise SystemExit(main())
