from edge.early_signals import main

raise SystemExit(main())
