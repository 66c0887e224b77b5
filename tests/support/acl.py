"""A redis-server that loads docs/acl/users.acl, with a fresh password for every role."""

from __future__ import annotations

import secrets
from pathlib import Path

import redis

from tests.support.redis_server import RedisServer

ACL_FILE = Path(__file__).resolve().parents[2] / "docs" / "acl" / "users.acl"
ROLES = ("admin", "producer", "coordinator", "worker", "observer")


class AclRedisServer(RedisServer):
    """redis-server --aclfile: the documented file, its CHANGE-ME passwords replaced."""

    def __init__(self) -> None:
        super().__init__()
        self.passwords = {role: secrets.token_hex(12) for role in ROLES}
        text = ACL_FILE.read_text()
        for role, password in self.passwords.items():
            text = text.replace(f">CHANGE-ME-{role}", f">{password}")
        assert "CHANGE-ME" not in text, "a role of users.acl has no test password"
        self.acl_path = self.dir / "users.acl"
        self.acl_path.write_text(text)
        self.extra_args = ["--aclfile", str(self.acl_path)]

    def url_for(self, role: str) -> str:
        return f"redis://{role}:{self.passwords[role]}@127.0.0.1:{self.port}/0"

    def client(self, role: str = "admin") -> redis.Redis:
        return redis.Redis.from_url(self.url_for(role), socket_timeout=10)

    def _probe_client(self) -> redis.Redis:
        return self.client()
