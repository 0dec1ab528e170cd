import sys

from batchshaping.cli import main

sys.exit(main())
