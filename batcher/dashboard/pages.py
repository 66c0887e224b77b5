"""The dashboard's HTML: small shells that ``static/dashboard.js`` fills from the JSON API.

Nothing read from Redis is put in the HTML here; the script sets it as text, never markup.
"""

from __future__ import annotations

from html import escape

_HEAD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/uPlot.min.css">
<link rel="stylesheet" href="/static/dashboard.css">
</head>"""

_NAV = """<header class="top"><a class="brand" href="/">redis-batcher</a>
<span id="crumbs">{crumbs}</span><span class="spacer"></span>
<span id="session" class="session"></span></header>"""


def page(kind: str, refresh_ms: int, *, queue: str = "", batch: str = "") -> str:
    """The shell of the ``overview``, ``queue`` or ``batch`` page."""
    crumbs = ""
    if queue:
        crumbs = f' / <a href="/queues/{escape(queue)}">{escape(queue)}</a>'
    if batch:
        crumbs += f" / batch {escape(batch)}"
    title = "redis-batcher" + (f" · {queue}" if queue else "") + (f" · {batch}" if batch else "")
    return "".join([
        _HEAD.format(title=escape(title)),
        f'<body data-page="{kind}" data-queue="{escape(queue)}" data-batch="{escape(batch)}" '
        f'data-refresh-ms="{int(refresh_ms)}">',
        _NAV.format(crumbs=crumbs),
        '<main id="main"><p class="muted" id="loading">loading…</p></main>',
        '<p id="error" class="error" hidden></p>',
        '<script src="/static/uPlot.iife.min.js"></script>',
        '<script src="/static/dashboard.js"></script>',
        "</body></html>",
    ])


def login_page(token_configured: bool, *, failed: bool = False) -> str:
    """The form that trades the write token for a cookie."""
    if not token_configured:
        body = ("<p>This dashboard is read-only: it was started without a write token "
                "(<code>batcher dashboard --write-token …</code> or "
                "<code>BATCHER_DASHBOARD_TOKEN</code>).</p>")
    else:
        note = '<p class="error">Wrong token.</p>' if failed else ""
        body = (f'{note}<form method="post" action="/login" class="login">'
                '<label>write token <input type="password" name="token" autofocus '
                'autocomplete="current-password"></label> <button type="submit">unlock</button>'
                "</form><p class=\"muted\">The token is kept as an HttpOnly cookie on this "
                "browser; it unlocks pause / resume, flush now, requeue and purge.</p>")
    return "".join([_HEAD.format(title="redis-batcher · unlock"), "<body>",
                    _NAV.format(crumbs=" / unlock"), f"<main>{body}</main></body></html>"])
