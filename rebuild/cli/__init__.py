"""The command line, one module per command group (`main` assembles them and runs them)."""
