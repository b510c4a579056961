"""``python -m concierge``: the same as the ``concierge`` command."""

from concierge.cli import main

raise SystemExit(main())
