"""`python -m pluq ...` runs the `pluq` command line."""

from __future__ import annotations

from pluq.cli import main

if __name__ == "__main__":
    main()
