from classrobust.cli.main import main

raise SystemExit(main())
