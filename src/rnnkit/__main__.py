from rnnkit.cli.main import main

raise SystemExit(main())
