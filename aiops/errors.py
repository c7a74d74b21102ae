"""The aiops exception family.

Every error aiops raises on purpose derives from :class:`AiopsError`; third-party errors are
wrapped where they enter (the Prometheus client, the store, Grafana) so callers catch one root
and users read one clear sentence instead of a traceback.
"""

from __future__ import annotations


class AiopsError(Exception):
    """Root of all aiops errors. ``hint`` says how to fix it, when we know."""

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


class ConfigError(AiopsError):
    """The configuration is invalid. ``problems`` holds ``(yaml_path, message)`` pairs."""

    def __init__(self, message: str, problems: list[tuple[str, str]] | None = None, **kw):
        super().__init__(message, **kw)
        self.problems = problems or []

    def __str__(self) -> str:
        if not self.problems:
            return super().__str__()
        lines = [self.message] + [f"  {path}: {msg}" for path, msg in self.problems]
        return "\n".join(lines)


class InputError(AiopsError):
    """User-supplied data (a CSV, a payload, a query) cannot be used as given."""


class SourceError(AiopsError):
    """A metric source failed. ``watch`` and ``query`` say which request."""

    def __init__(self, message: str, *, watch: str | None = None, query: str | None = None, **kw):
        super().__init__(message, **kw)
        self.watch = watch
        self.query = query

    def __str__(self) -> str:
        where = []
        if self.watch:
            where.append(f"watch {self.watch!r}")
        if self.query:
            where.append(f"query {self.query!r}")
        prefix = f"[{', '.join(where)}] " if where else ""
        return prefix + super().__str__()


class SourceUnavailable(SourceError):
    """The source could not be reached (connection refused, timeout) after retries."""


class BadQuery(SourceError):
    """The source rejected the query (bad PromQL); ``message`` carries the source's words."""


class AuthError(SourceError):
    """The source refused our credentials (401/403)."""


class NoData(SourceError):
    """The query ran fine and matched no series in the range."""


class TooManySeries(SourceError):
    """The query matched more series than the watch allows."""

    def __init__(self, message: str, *, count: int, limit: int, **kw):
        super().__init__(message, **kw)
        self.count = count
        self.limit = limit


class StoreError(AiopsError):
    """The store could not be read or written; nothing was half-written."""


class ModelError(AiopsError):
    """A model could not be fitted, loaded or used."""


class GrafanaError(AiopsError):
    """Grafana refused or failed a request. ``status`` is the HTTP status when there was one."""

    def __init__(self, message: str, *, status: int | None = None, **kw):
        super().__init__(message, **kw)
        self.status = status


class ExplainError(AiopsError):
    """Evidence or explanation could not be produced."""
