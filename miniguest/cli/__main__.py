"""`python -m miniguest.cli`."""
from miniguest.cli.main import main

raise SystemExit(main())
