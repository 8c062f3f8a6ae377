from __future__ import annotations

from imds.cli import main

raise SystemExit(main())
