"""probret.cli: thin command-line layer (parsing, progress, output, exit codes)."""
