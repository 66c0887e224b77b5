"""``batcher dashboard``: a web UI over the same figures as ``batcher stats`` (Starlette app,
served by uvicorn). See :mod:`batcher.dashboard.app`."""

from __future__ import annotations

import ipaddress

from batcher.dashboard.app import DashboardSettings, create_app

__all__ = ["DashboardSettings", "create_app", "is_loopback", "serve"]


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve beyond loopback


def serve(settings: DashboardSettings, host: str, port: int) -> None:
    """Serve the dashboard until SIGTERM/SIGINT (uvicorn handles both and returns).

    Raises ``ValueError`` when ``host`` is beyond loopback and no write token is set: an
    unauthenticated page must not be exposed by accident, and ``OSError`` when the port
    cannot be bound.
    """
    import uvicorn

    if settings.write_token is None and not is_loopback(host):
        raise ValueError(f"refusing to listen on {host}: beyond loopback the dashboard needs "
                         "a write token (--write-token or BATCHER_DASHBOARD_TOKEN)")
    config = uvicorn.Config(create_app(settings), host=host, port=port, log_config=None,
                            access_log=False, log_level="warning")
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        raise OSError(f"cannot listen on {host}:{port}")
