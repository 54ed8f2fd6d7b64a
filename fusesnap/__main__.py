from fusesnap.cli import main

raise SystemExit(main())
