from gnn.cli import main

raise SystemExit(main())
