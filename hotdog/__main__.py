import sys

from hotdog import malloc_tuning, threads

# Before anything imports MXNet: it reads OMP_NUM_THREADS once, at import (hotdog.threads).
threads.apply("cli")
# A CLI process ends with its command: keep freed memory for reuse (hotdog.malloc_tuning).
malloc_tuning.apply()

from hotdog.cli import main  # noqa: E402

sys.exit(main())
