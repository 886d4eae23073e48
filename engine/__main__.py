import sys

from engine.cli import console

sys.exit(console())
