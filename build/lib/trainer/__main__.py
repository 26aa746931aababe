import sys

from trainer.cli import main

if __name__ == "__main__":  # DataLoader workers started with "spawn" import this module too
    sys.exit(main())
