"""`python -m anima ...`: the same as the `anima` command (for environments without its script)."""

from anima.cli import main

raise SystemExit(main())
