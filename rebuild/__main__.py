"""`python -m rebuild` runs the command line."""

from rebuild.cli import main

main()
