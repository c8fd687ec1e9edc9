import sys

from haloprune.cli import main

sys.exit(main())
