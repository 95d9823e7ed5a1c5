"""`python -m broker_exporter`: the broker metrics exporter."""

import sys

from broker_exporter.exporter import main

sys.exit(main())
