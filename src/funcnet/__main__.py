import sys

from funcnet.cli import main

sys.exit(main())
