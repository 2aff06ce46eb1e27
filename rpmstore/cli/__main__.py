import sys

from rpmstore.cli import main

sys.exit(main())
