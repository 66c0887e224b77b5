"""The RSS/Atom/JSON Feed fetcher (``batcher fetch``): an application of the queue, behind the
``[feeds]`` extra (httpx, feedparser, chardet). ``status.py`` and ``schedule.py``'s Redis reads
need only the core; ``fetch.py`` and ``parse.py`` need the extra."""
