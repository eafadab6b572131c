"""`python -m rebuild` runs the command line."""

from rebuild.cli.main import main

main()
