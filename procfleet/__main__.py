import sys

from procfleet.cli import main

sys.exit(main())
