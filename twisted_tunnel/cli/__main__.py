"""C{python -m twisted_tunnel.cli}: the C{edge-tunnel} command."""

import sys

from . import main

sys.exit(main())
