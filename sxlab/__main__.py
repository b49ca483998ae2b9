"""Allow ``python -m sxlab``."""

from sxlab.cli import main

raise SystemExit(main())
