import sys

from pyro_svi_ext.cli import main

sys.exit(main())
