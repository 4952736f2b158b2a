import sys

from tah.cli import main

sys.exit(main())
