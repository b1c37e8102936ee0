"""The command line: parse, call the core, render with Rich or --json. Nothing else."""
