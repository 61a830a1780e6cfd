"""``python -m dask_coded_als.cli``: the same as the ``dask-coded-als`` command."""

import sys

from dask_coded_als.cli import main

sys.exit(main())
