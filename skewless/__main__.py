import sys

from skewless.cli import main

sys.exit(main())
