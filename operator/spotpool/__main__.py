from spotpool.cli import main

raise SystemExit(main())
