"""The admin API's bearer token: where it comes from, where the CLI finds it.

In order: `security.admin_token` in the deployment YAML, the FLEETLM_ADMIN_TOKEN environment
variable, else `fleetlm serve` generates one and writes it (mode 0600) to `admin-token` in
fleetlm's cache directory, beside `admin-url`, so `fleetlm status` on the same machine needs no
flags. The controller keeps only the token's SHA-256.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from actors.common.config import cache_root
from orchestrator.config.load import DeploymentConfig

ADMIN_TOKEN_ENV = "FLEETLM_ADMIN_TOKEN"  # noqa: S105 (a variable name, not a token)
ADMIN_URL_ENV = "FLEETLM_ADMIN_URL"
TOKEN_FILE = "admin-token"  # noqa: S105 (a file name, not a token)
URL_FILE = "admin-url"


@dataclass(frozen=True)
class AdminToken:
    value: str
    source: Literal["config", "env", "generated"]

    @property
    def digest(self) -> str:
        return token_digest(self.value)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_matches(presented: str, digest: str) -> bool:
    """Constant-time check of a presented token against the stored digest ("" matches none)."""
    if not presented or not digest:
        return False
    return hmac.compare_digest(token_digest(presented), digest)


def resolve_admin_token(cfg: DeploymentConfig) -> AdminToken:
    """The configured token, or a new random one (not yet written anywhere)."""
    if cfg.security.admin_token:
        return AdminToken(cfg.security.admin_token, "config")
    env = os.environ.get(ADMIN_TOKEN_ENV, "").strip()
    if env:
        return AdminToken(env, "env")
    return AdminToken(secrets.token_urlsafe(32), "generated")


def write_admin_files(url: str, token: AdminToken, root: Path | None = None) -> Path:
    """Record where the admin API is (and a generated token, 0600) for the CLI."""
    root = root or cache_root()
    root.mkdir(parents=True, exist_ok=True)
    _write_private(root / URL_FILE, url + "\n", mode=0o644)
    if token.source == "generated":
        _write_private(root / TOKEN_FILE, token.value + "\n", mode=0o600)
    return root / TOKEN_FILE


def _write_private(path: Path, text: str, mode: int) -> None:
    # Created with its mode from the start (no window where another user may read it), then
    # moved into place so a reader never sees half a file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def find_admin_url(root: Path | None = None) -> str | None:
    """$FLEETLM_ADMIN_URL, else the URL the last `fleetlm serve` here wrote."""
    return os.environ.get(ADMIN_URL_ENV) or _read(root, URL_FILE)


def find_admin_token(root: Path | None = None) -> str | None:
    """$FLEETLM_ADMIN_TOKEN, else the token the last `fleetlm serve` here generated."""
    return os.environ.get(ADMIN_TOKEN_ENV, "").strip() or _read(root, TOKEN_FILE)


def _read(root: Path | None, name: str) -> str | None:
    try:
        text = ((root or cache_root()) / name).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return text or None
