import sys

from musicrec.cli import main

sys.exit(main())
