from pyrelayd.cli import main

raise SystemExit(main())
