import sys

from daedalus.cli.main import main

sys.exit(main())
