from tiersel.cli import main

raise SystemExit(main())
