"""``python -m peftlab ...`` runs the ``peftlab`` command line (the web app starts training jobs this way)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
