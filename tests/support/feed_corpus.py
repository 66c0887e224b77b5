"""Many small, varied, malformed feeds, each exercising one feature, with what a fetch
of all of them must yield.

Every item carries a unique token (``tok<feed>x<item>``) in its text, so a test can
check that each distinct item arrived, and how its text was decoded. ``Corpus.shared``
counts the items that are, on purpose, the same article in two feeds (one link): those,
and only those, must come back as duplicates.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

LEGACY_TEXT = {
    "cp1252": "Le café de la rue Saint-Honoré proposait une crème brûlée délicieuse à côté du "
              "théâtre, et les élèves étaient fiers de leur résumé",
    "koi8-r": "Привет мир, это новости дня и ещё немного текста для определения кодировки",
    "shift_jis": "今日のニュースです。東京では雨が降っています。明日は晴れるでしょう",
}


@dataclass
class Corpus:
    """What was written: feed file names, tokens of every item, and the expected texts."""

    names: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    shared: int = 0  # items that repeat another feed's article: expected duplicates
    titles: dict[str, str] = field(default_factory=dict)  # token -> expected plain title

    @property
    def distinct(self) -> int:
        """Entries a fetch of every feed must accept."""
        return len(self.tokens) - self.shared


def _rss(items: str, version: str = "2.0", encoding: str | None = "utf-8") -> str:
    decl = f' encoding="{encoding}"' if encoding else ""
    return (f'<?xml version="1.0"{decl}?><rss version="{version}"><channel><title>c</title>'
            f"<link>http://example.org/</link><description>d</description>{items}"
            "</channel></rss>")


def _description_only(n: int, c: Corpus) -> tuple[str, bytes]:
    # valid RSS 2.0: an item may carry only a description (no title, guid, link or date)
    toks = [f"tok{n}x{i}" for i in range(3)]
    c.tokens += toks
    items = "".join(f"<item><description>Only text, {t}.</description></item>" for t in toks)
    return "xml", _rss(items).encode()


def _numeric_guids(n: int, c: Corpus) -> tuple[str, bytes]:
    # post numbers as GUIDs, the same in every feed of this kind
    toks = [f"tok{n}x{i}" for i in range(3)]
    c.tokens += toks
    items = "".join(
        f'<item><title>Post {t}</title><guid isPermaLink="false">{i + 1}</guid></item>'
        for i, t in enumerate(toks))
    return "xml", _rss(items).encode()


def _numeric_guid_is_link(n: int, c: Corpus) -> tuple[str, bytes]:
    # isPermaLink defaults to true: feedparser copies "7" into the link
    toks = [f"tok{n}x{i}" for i in range(2)]
    c.tokens += toks
    items = "".join(f"<item><title>Numbered {t}</title><guid>{i + 7}</guid></item>"
                    for i, t in enumerate(toks))
    return "xml", _rss(items).encode()


def _rss091(n: int, c: Corpus) -> tuple[str, bytes]:
    toks = [f"tok{n}x{i}" for i in range(2)]
    c.tokens += toks
    items = "".join(f"<item><title>Old {t}</title><link>http://old{n}.example/{t}</link>"
                    "</item>" for t in toks)
    return "xml", _rss(items, version="0.91").encode()


def _rss092_untitled(n: int, c: Corpus) -> tuple[str, bytes]:
    toks = [f"tok{n}x{i}" for i in range(2)]
    c.tokens += toks
    items = "".join(f"<item><description>&lt;p&gt;Note {t}&lt;/p&gt;</description></item>"
                    for t in toks)
    return "xml", _rss(items, version="0.92").encode()


def _rdf(n: int, c: Corpus) -> tuple[str, bytes]:
    toks = [f"tok{n}x{i}" for i in range(2)]
    c.tokens += toks
    items = "".join(
        f'<item rdf:about="http://rdf{n}.example/{t}"><title>RDF {t}</title>'
        f"<link>http://rdf{n}.example/{t}</link><dc:date>2025-03-1{i}T08:00:00Z</dc:date></item>"
        for i, t in enumerate(toks))
    body = ('<?xml version="1.0"?><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"'
            ' xmlns="http://purl.org/rss/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/">'
            f'<channel rdf:about="http://rdf{n}.example/"><title>r</title>'
            f"<link>http://rdf{n}.example/</link><description>d</description></channel>"
            f"{items}</rdf:RDF>")
    return "rdf", body.encode()


def _atom_html_titles(n: int, c: Corpus) -> tuple[str, bytes]:
    toks = [f"tok{n}x{i}" for i in range(2)]
    c.tokens += toks
    entries = ""
    for t in toks:
        c.titles[t] = f"Fast & {t} safe"
        entries += (f'<entry><id>tag:atom{n}.example,2025:{t}</id>'
                    f'<title type="html">&lt;b&gt;Fast&lt;/b&gt; &amp;#38;  {t}\n safe</title>'
                    "<updated>2025-03-14T09:00:00Z</updated>"
                    f'<content type="html">&lt;p&gt;Body of {t}&lt;/p&gt;</content></entry>')
    body = ('<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom">'
            f"<title>a</title><id>urn:uuid:feed-{n}</id><updated>2025-03-14T09:00:00Z</updated>"
            f"{entries}</feed>")
    return "atom", body.encode()


def _atom_no_ids(n: int, c: Corpus) -> tuple[str, bytes]:
    toks = [f"tok{n}x{i}" for i in range(2)]
    c.tokens += toks
    entries = "".join(f"<entry><title>Idless {t}</title><summary>s</summary></entry>"
                      for t in toks)
    body = ('<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom"><title>a</title>'
            f"{entries}</feed>")
    return "atom", body.encode()


def _bad_dates(n: int, c: Corpus) -> tuple[str, bytes]:
    dates = ["0000-00-00T00:00:00Z", "0001-01-01T00:00:00+05:00", "not a date",
             "Fri, 14 Mar 2025 09:00:00 GMT"]
    toks = [f"tok{n}x{i}" for i in range(len(dates))]
    c.tokens += toks
    items = "".join(f"<item><description>Dated {t}</description><pubDate>{d}</pubDate></item>"
                    for t, d in zip(toks, dates, strict=True))
    return "xml", _rss(items).encode()


def _legacy(n: int, c: Corpus) -> tuple[str, bytes]:
    # no charset in the HTTP header (.rss) and none in the XML declaration
    encoding = list(LEGACY_TEXT)[n % len(LEGACY_TEXT)]
    tok = f"tok{n}x0"
    c.tokens.append(tok)
    title = f"{LEGACY_TEXT[encoding]} {tok}"
    c.titles[tok] = title
    items = f"<item><title>{title}</title><description>{title}</description></item>"
    return "rss", _rss(items, encoding=None).encode(encoding)


def _bad_tags_and_oversize(n: int, c: Corpus) -> tuple[str, bytes]:
    toks = [f"tok{n}x{i}" for i in range(2)]
    c.tokens += toks
    cats = "<category></category><category domain='x'/>" + "".join(
        f"<category>c{i}</category>" for i in range(60))
    items = (f"<item><title>Tagged {toks[0]}</title>{cats}</item>"
             f"<item><title>{toks[1]} {'long ' * 400}</title></item>")
    return "xml", _rss(items).encode()


def _recoverable_xml(n: int, c: Corpus) -> tuple[str, bytes]:
    # an undefined entity and no closing tags: feedparser's loose parser still reads it
    toks = [f"tok{n}x{i}" for i in range(2)]
    c.tokens += toks
    items = "".join(f"<item><title>Broken &nbsp; {t}</title></item>" for t in toks)
    return "xml", f'<?xml version="1.0"?><rss version="2.0"><channel>{items}'.encode()


def _json_feed(n: int, c: Corpus) -> tuple[str, bytes]:
    toks = [f"tok{n}x{i}" for i in range(3)]
    c.tokens += toks
    items = [{"id": i + 1, "content_html": f"<p>JSON {t}</p>"} for i, t in enumerate(toks)]
    version = "https://jsonfeed.org/version/1" if n % 2 else "https://jsonfeed.org/version/1.1"
    return "json", json.dumps({"version": version, "title": "j", "items": items}).encode()


def _syndicated(n: int, c: Corpus) -> tuple[str, bytes]:
    # one own item, and one article that every feed of this kind also carries (one link)
    own = f"tok{n}x0"
    c.tokens += [own, "tokwire"]  # the shared article's token, once per copy
    if "tokwire" in c.tokens[:-1]:
        c.shared += 1
    items = (f"<item><title>Own {own}</title><link>http://syn{n}.example/own</link></item>"
             "<item><title>Shared tokwire</title><link>http://wire.example/story</link></item>")
    return "xml", _rss(items).encode()


KINDS: dict[str, Callable[[int, Corpus], tuple[str, bytes]]] = {
    "description_only": _description_only, "numeric_guids": _numeric_guids,
    "numeric_guid_is_link": _numeric_guid_is_link, "rss091": _rss091,
    "rss092_untitled": _rss092_untitled, "rdf": _rdf, "atom_html_titles": _atom_html_titles,
    "atom_no_ids": _atom_no_ids, "bad_dates": _bad_dates, "legacy": _legacy,
    "bad_tags_and_oversize": _bad_tags_and_oversize, "recoverable_xml": _recoverable_xml,
    "json_feed": _json_feed, "syndicated": _syndicated,
}


def write_corpus(directory: Path, copies: int) -> Corpus:
    """``copies`` feeds of every kind in ``directory``, and a ``feeds.toml`` listing them
    with ``{base}`` urls."""
    corpus = Corpus()
    toml = []
    n = 0
    for _ in range(copies):
        for kind, build in KINDS.items():
            suffix, body = build(n, corpus)
            name = f"f{n:04d}_{kind}.{suffix}"
            (directory / name).write_bytes(body)
            corpus.names.append(name)
            toml.append(f'[[feeds]]\nurl = "{{base}}/{name}"\nsource = "{name}"\n')
            n += 1
    (directory / "feeds.toml").write_text("\n".join(toml))
    return corpus
