"""``python -m tiersel.sim serve|scenarios ...``: the ``tiersel sim`` subcommands alone."""

from tiersel.cli.sim import main

raise SystemExit(main())
