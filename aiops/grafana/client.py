"""A thin wrapper over grafana-client's :class:`GrafanaApi`.

Every call goes through :meth:`GrafanaClient._call`, which turns grafana-client and niquests
errors into :class:`aiops.errors.GrafanaError` carrying the HTTP status and a hint. Bodies are
built here, never by grafana-client's helpers that send ``null`` for unset fields (its
``add_annotation`` does), so every request is valid against Grafana's definitions.
"""

from __future__ import annotations

import logging
from typing import Any, Callable
from urllib.parse import urlparse

from aiops.config import GrafanaConfig
from aiops.errors import GrafanaError

logger = logging.getLogger(__name__)

__all__ = ["GrafanaClient", "is_retryable"]


def is_retryable(exc: GrafanaError) -> bool:
    """True when the request may succeed later: no answer, a timeout, 429 or a 5xx."""
    return exc.status is None or exc.status == 0 or exc.status == 429 or exc.status >= 500


def _hint(status: int | None, url: str) -> str:
    if status == 401:
        return "check grafana.token: a service-account token of this Grafana, sent as Bearer"
    if status == 403:
        return "give the service account the Editor role (or folder/datasource write permission)"
    if status == 404:
        return "the object does not exist in this Grafana (or grafana.org_id points at another org)"
    if status in (409, 412):
        return "an object with this name or uid exists; rename it in Grafana or set grafana.overwrite_edited"
    if status == 400:
        return "Grafana rejected the request body; this is a bug in aiops, please report it"
    return f"is Grafana up at {url}? annotations wait in the outbox and are retried"


class GrafanaClient:
    """The Grafana calls aiops makes. Build with :meth:`from_config`.

    Methods returning ``dict | None`` answer None for 404; everything else that is not a 2xx
    raises :class:`GrafanaError`.
    """

    def __init__(self, api: Any, *, url: str):
        self.api = api
        self.url = url

    @classmethod
    def from_config(cls, cfg: GrafanaConfig) -> "GrafanaClient":
        """Build from ``grafana.url``/``token``/``org_id``/``timeout``/``verify_tls``."""
        from grafana_client import GrafanaApi

        if not cfg.url:
            raise GrafanaError("grafana.url is not set", hint="set grafana.url, or use file mode")
        u = urlparse(cfg.url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise GrafanaError(f"grafana.url must be http(s)://host[:port][/path], got {cfg.url!r}")
        prefix = u.path.strip("/")
        api = GrafanaApi(
            auth=cfg.token.get_secret_value() if cfg.token is not None else None,
            host=u.hostname,
            port=u.port,
            url_path_prefix=f"{prefix}/" if prefix else "",  # grafana-client joins "{prefix}api"
            protocol=u.scheme,
            verify=cfg.verify_tls,
            timeout=cfg.timeout.seconds,
            organization_id=cfg.org_id,
        )
        return cls(api, url=cfg.url.rstrip("/"))

    # ------------------------------------------------------------------ plumbing

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, missing_ok: bool = False, **kw: Any) -> Any:
        import niquests
        from grafana_client.client import GrafanaException

        try:
            return fn(*args, **kw)
        except GrafanaException as exc:
            status = exc.status_code or None
            if missing_ok and status == 404:
                return None
            body = exc.response.get("message", exc.response) if isinstance(exc.response, dict) else exc.response
            detail = f": {body}" if body else ""
            raise GrafanaError(
                f"Grafana {what} failed with {status or 'no answer'}{detail}", status=status, hint=_hint(status, self.url)
            ) from None
        except (niquests.exceptions.RequestException, OSError) as exc:
            raise GrafanaError(
                f"Grafana {what} failed: cannot reach {self.url} ({type(exc).__name__})",
                status=None,
                hint=_hint(None, self.url),
            ) from None

    # ------------------------------------------------------------------ calls

    def health(self) -> dict:
        """``GET /api/health`` (no token needed): ``{"database": "ok", "version": ...}``."""
        return self._call("health check", self.api.client.GET, "/health")

    def check_auth(self) -> None:
        """Raise GrafanaError (401 with a token hint) unless the token is accepted."""
        self._call("token check", self.api.client.GET, "/folders", params={"limit": 1})

    def get_folder(self, uid: str) -> dict | None:
        return self._call(f"get folder {uid!r}", self.api.folder.get_folder, uid, missing_ok=True)

    def create_folder(self, uid: str, title: str) -> dict:
        return self._call(f"create folder {uid!r}", self.api.folder.create_folder, title, uid=uid)

    def get_datasource(self, uid: str) -> dict | None:
        return self._call(
            f"get datasource {uid!r}", self.api.datasource.get_datasource_by_uid, uid, missing_ok=True
        )

    def create_datasource(self, body: dict) -> dict:
        return self._call(f"create datasource {body.get('uid')!r}", self.api.datasource.create_datasource, body)

    def update_datasource(self, uid: str, body: dict) -> dict:
        return self._call(f"update datasource {uid!r}", self.api.datasource.update_datasource_by_uid, uid, body)

    def get_dashboard(self, uid: str) -> dict | None:
        """``{"dashboard": {...}, "meta": {...}}`` or None when no dashboard has this uid."""
        return self._call(f"get dashboard {uid!r}", self.api.dashboard.get_dashboard, uid, missing_ok=True)

    def save_dashboard(
        self, dashboard: dict, *, folder_uid: str | None, overwrite: bool = False, message: str = "aiops"
    ) -> dict:
        """``POST /api/dashboards/db``; 412 (changed by someone else, name exists) raises."""
        body: dict[str, Any] = {"dashboard": dashboard, "overwrite": overwrite, "message": message}
        if folder_uid:
            body["folderUid"] = folder_uid
        return self._call(
            f"save dashboard {dashboard.get('uid')!r}", self.api.dashboard.update_dashboard, body
        )

    def create_annotation(self, body: dict) -> int:
        """``POST /api/annotations`` with ``body`` as given; returns the new annotation id."""
        res = self._call("create annotation", self.api.client.POST, "/annotations", json=body)
        return int(res["id"])

    def patch_annotation(self, annotation_id: int, body: dict) -> None:
        """``PATCH /api/annotations/{id}``: only the fields in ``body`` change."""
        self._call(
            f"update annotation {annotation_id}", self.api.client.PATCH, f"/annotations/{int(annotation_id)}", json=body
        )

    def find_annotations(self, **query: Any) -> list[dict]:
        """``GET /api/annotations``; keys as Grafana names them (``dashboardUID``, ``tags``...)."""
        params = {k: v for k, v in query.items() if v is not None}
        return self._call("find annotations", self.api.client.GET, "/annotations", params=params)
