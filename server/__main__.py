"""``python -m server``: the ``llamaserve`` command (see :mod:`server.cli.main`)."""

from __future__ import annotations

import sys

from server.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
