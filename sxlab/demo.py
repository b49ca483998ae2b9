"""End-to-end demonstration run by ``make demo`` and ``sxlab demo``."""

from __future__ import annotations

import platform


def main() -> int:
    """Print a summary of the demo and return 0.

    Returns
    -------
    int
        Exit status, 0 on success.
    """
    import numpy as np

    from sxlab import __version__

    print(f"sxlab {__version__} demo")
    print(f"  python {platform.python_version()}, numpy {np.__version__}")
    print("  pipeline stages: not yet wired into the demo")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
