"""Allow ``python -m streamseq``."""
from streamseq.cli import main

raise SystemExit(main())
