"""``python -m dcvbench``: the same command line as the ``dcvbench`` script.

Runs record ``shlex.join(sys.argv)`` as their command. The program is named as the script names it,
so a run started this way (as ``dcvbench sweep`` starts each of its runs) records exactly what a
user would type.
"""

import sys

from dcvbench.cli import main

if __name__ == "__main__":
    sys.argv[0] = "dcvbench"
    main()
