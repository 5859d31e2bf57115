import sys

from qrjax.cli import main

sys.exit(main())
