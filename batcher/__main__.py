"""``python -m batcher`` runs the ``batcher`` command."""

from batcher.cli import main

if __name__ == "__main__":
    main()
