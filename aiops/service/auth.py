"""Token checks for the service's write endpoints, and the bind-address safety rule.

Rule: with a token configured, writes need ``Authorization: Bearer <token>`` (compared in
constant time). Without one, writes are accepted only when the service listens on loopback,
or when ``service.allow_insecure_bind`` says the operator accepts an open endpoint.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging

from aiops.config import ServiceConfig
from aiops.errors import ConfigError

logger = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ``::1``; False for 0.0.0.0, names, anything else."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bearer_ok(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <token>`` (constant-time compare)."""
    scheme, _, given = (header or "").strip().partition(" ")
    # Compare even on a wrong scheme so the timing says nothing about which part was wrong.
    same = hmac.compare_digest(given.strip().encode(), token.encode())
    return scheme.lower() == "bearer" and same


def write_denied(service: ServiceConfig, header: str | None) -> str | None:
    """Why a write request must be refused (a message for the 401 body), or None to allow it."""
    if service.token is not None:
        if not header:
            return "missing bearer token: send 'Authorization: Bearer <service.token>'"
        if not bearer_ok(header, service.token.get_secret_value()):
            return "wrong bearer token"
        return None
    if is_loopback(service.host) or service.allow_insecure_bind:
        return None
    return (
        "no service.token is configured and the service listens beyond loopback, so writes are "
        "refused; set service.token (or service.allow_insecure_bind: true)"
    )


def read_denied(service: ServiceConfig, header: str | None) -> str | None:
    """Why a read of private data must be refused, or None (token only if ``read_token_required``)."""
    if service.token is None or not service.read_token_required:
        return None
    if not bearer_ok(header, service.token.get_secret_value()):
        return "missing or wrong bearer token"
    return None


def check_bind(service: ServiceConfig, host: str | None = None) -> None:
    """Refuse to listen beyond loopback without a token, unless ``allow_insecure_bind``.

    Raises:
        ConfigError: ``host`` is not loopback, no token is set and insecure binds are not allowed.
    """
    host = host or service.host
    if is_loopback(host) or service.token is not None:
        return
    if service.allow_insecure_bind:
        logger.warning("listening on %s without a token: anyone who can reach it can post alerts", host)
        return
    raise ConfigError(
        f"refusing to listen on {host} without service.token",
        hint="set service.token or service.token_file (AIOPS_SERVICE__TOKEN), bind to 127.0.0.1, "
        "or set service.allow_insecure_bind: true if a proxy in front checks access",
    )
