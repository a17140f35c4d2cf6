import sys

from harness.cli import run_cli

sys.exit(run_cli())
