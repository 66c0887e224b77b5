"""``python -m batcher.cli``: what ``batcher worker --processes N`` runs for each child."""

from batcher.cli import main

main()
