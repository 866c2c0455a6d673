"""``python -m analysis``: the rlhf-report command."""

from analysis.cli import main

raise SystemExit(main())
