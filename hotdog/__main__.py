import sys

from hotdog import threads

# Before anything imports MXNet: it reads OMP_NUM_THREADS once, at import (hotdog.threads).
threads.apply("cli")

from hotdog.cli import main  # noqa: E402

sys.exit(main())
