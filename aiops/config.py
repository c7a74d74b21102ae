"""The validated configuration tree.

One YAML file, validated by pydantic with ``extra="forbid"`` (a misspelt key is an error, not a
silent default). Precedence: built-in defaults < YAML file < environment (``AIOPS_...``) <
CLI flags. Secrets are :class:`pydantic.SecretStr` and may come from a file (``token_file``).

Environment overrides use ``__`` between levels and an index for lists, upper or lower case:
``AIOPS_PROMETHEUS__URL=http://prom:9090``, ``AIOPS_WATCHES__0__STEP=1m``. Values are parsed
as YAML scalars, so ``AIOPS_PROMETHEUS__VERIFY_TLS=false`` is a boolean.

:func:`load_config` returns an :class:`AiopsConfig` or raises :class:`ConfigError` whose
``problems`` name each bad field by its YAML path (``watches[2].step``) and line.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Literal, Mapping

import pandas as pd
import yaml
from pydantic_core import core_schema
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from aiops.errors import ConfigError
from aiops.timeutil import parse_duration

logger = logging.getLogger(__name__)

ENV_PREFIX = "AIOPS_"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Duration(str):
    """A Prometheus-style duration kept as written (``5m``) with ``.td`` as a Timedelta."""

    @property
    def td(self) -> pd.Timedelta:
        return parse_duration(str(self), allow_zero=True)

    @property
    def seconds(self) -> float:
        return self.td.total_seconds()

    @classmethod
    def __get_pydantic_core_schema__(cls, _source: Any, _handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            _duration,
            json_schema_input_schema=core_schema.str_schema(),
            serialization=core_schema.plain_serializer_function_ser_schema(str),
        )

    @classmethod
    def __get_pydantic_json_schema__(cls, _schema: Any, handler: Any) -> dict:
        return {"type": "string", "pattern": r"^(\d+(\.\d+)?(ms|s|m|h|d|w|y))+$", "examples": ["30s", "5m", "1h30m", "7d"]}


def _duration(v: Any) -> Duration:
    if isinstance(v, Duration):
        return v
    parse_duration(v)  # raises ValueError with the accepted forms
    return Duration(str(v).strip())


def _resolve_secret(model: BaseModel, name: str) -> None:
    """Fill secret ``name`` from ``<name>_file`` when that is set; both set is an error."""
    path = getattr(model, f"{name}_file")
    if getattr(model, name) is not None and path:
        raise ValueError(f"set {name} or {name}_file, not both")
    if path:
        p = Path(path).expanduser()
        try:
            secret = SecretStr(p.read_text().strip())
        except OSError as exc:
            raise ValueError(f"{name}_file: cannot read {p}: {exc.strerror}") from exc
        object.__setattr__(model, name, secret)


class BasicAuth(_Model):
    username: str
    password: SecretStr | None = None
    password_file: str | None = Field(None, description="File holding the password.")

    @model_validator(mode="after")
    def _resolve(self) -> "BasicAuth":
        _resolve_secret(self, "password")
        if self.password is None:
            raise ValueError("basic_auth needs password or password_file")
        return self


class PrometheusConfig(_Model):
    """Where metrics are read from (Prometheus, Thanos, Mimir, Cortex, VictoriaMetrics)."""

    url: str = Field("http://localhost:9090", description="Base URL of the Prometheus HTTP API.")
    bearer_token: SecretStr | None = Field(None, description="Sent as Authorization: Bearer.")
    bearer_token_file: str | None = Field(None, description="File holding the bearer token.")
    basic_auth: BasicAuth | None = None
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="Extra headers on every request, e.g. X-Scope-OrgID for a Mimir tenant.",
    )
    timeout: Duration = Field(Duration("30s"), description="Per-request timeout.")
    verify_tls: bool = True
    ca_file: str | None = Field(None, description="CA bundle for TLS verification.")
    max_points_per_request: int = Field(
        11000, ge=10, le=11000, description="Range queries are split so no series exceeds this."
    )
    retries: int = Field(3, ge=0, le=20, description="Retries on timeouts and connection errors.")
    backoff: Duration = Field(Duration("0.5s"), description="First retry delay; doubles each try.")
    max_series_per_query: int = Field(
        1000, ge=1, description="With a watch's split_by: most series one split query may return."
    )
    max_concurrency: int = Field(
        4, ge=1, le=64, description="Most requests in flight to this Prometheus at once (split queries)."
    )


    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(f"must be an http(s) URL like http://localhost:9090, got {v!r}")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _auth(self) -> "PrometheusConfig":
        _resolve_secret(self, "bearer_token")
        if self.bearer_token is not None and self.basic_auth is not None:
            raise ValueError("set bearer_token or basic_auth, not both")
        return self


class GrafanaConfig(_Model):
    """Where dashboards and annotations go. Without ``url`` they are written as files."""

    url: str | None = Field(None, description="Grafana base URL; unset = write files only.")
    token: SecretStr | None = Field(None, description="Service-account token (Bearer).")
    token_file: str | None = None
    org_id: int | None = Field(None, description="Sent as X-Grafana-Org-Id.")
    folder_uid: str = "aiops"
    folder_title: str = "aiops"
    datasource_uid: str = Field("aiops-prometheus", description="Uid of the provisioned datasource.")
    public_url: str | None = Field(
        None, description="URL Grafana uses to reach aiops's read API (datasource URL)."
    )
    overwrite_edited: bool = Field(
        False, description="Overwrite dashboards that were edited in Grafana since we wrote them."
    )
    output_dir: str = Field("aiops-output/grafana", description="Where files go without a url.")
    timeout: Duration = Duration("10s")
    verify_tls: bool = True


    @model_validator(mode="after")
    def _token(self) -> "GrafanaConfig":
        _resolve_secret(self, "token")
        return self


class StoreConfig(_Model):
    url: str = Field(
        "sqlite:///aiops.db",
        description="SQLAlchemy URL: sqlite:///path.db (default) or postgresql+psycopg://...",
    )


class SyntheticSourceConfig(_Model):
    """The embedded scenario generator (no servers needed)."""

    scenario: Literal["shop", "capacity", "quiet"] = "shop"
    seed: int = 0
    days: float = Field(10.0, gt=0, le=365)
    step: Duration = Duration("5m")
    end: str | None = Field(None, description="End time (ISO 8601); default: now, rounded.")



class FileSourceConfig(_Model):
    path: str = Field(..., description="CSV or Parquet: timestamp,value or timestamp,series,value.")


class SourceConfig(_Model):
    kind: Literal["prometheus", "synthetic", "file"] = Field("prometheus", description="Which source answers the watches' queries.")
    synthetic: SyntheticSourceConfig = Field(default_factory=SyntheticSourceConfig)
    file: FileSourceConfig | None = None

    @model_validator(mode="after")
    def _file(self) -> "SourceConfig":
        if self.kind == "file" and self.file is None:
            raise ValueError("kind 'file' needs file.path")
        return self


class ModelConfig(_Model):
    kind: str = Field("auto", description="Registered model name; 'auto' picks the default.")
    level: float = Field(0.8, gt=0, lt=1, description="Central interval level of the band.")
    seed: int = 0
    params: dict[str, Any] = Field(default_factory=dict, description="Model hyperparameters.")


class DetectorConfig(_Model):
    threshold: float = Field(
        5.0,
        gt=0,
        description="Score at or above which a point is anomalous. A score s means a tail "
        "probability of (1 - level)^s: 1.0 is the band edge, which (1 - level) of normal points "
        "cross by design; 5.0 at level 0.8 is about 1 normal point in 3,100.",
    )
    min_duration: Duration = Field(Duration("0s"), description="Shorter runs are not events.")
    merge_gap: Duration = Field(Duration("10m"), description="Runs this close merge into one.")
    critical_score: float = Field(8.0, gt=0, description="Peak score at which severity is critical.")

    @field_validator("min_duration", mode="wrap")
    @classmethod
    def _min(cls, v: Any, handler: Any) -> Duration:
        if str(v).strip() in ("0", "0s"):
            return Duration("0s")
        return handler(v)



class CapacityConfig(_Model):
    threshold: float = Field(..., description="Value whose crossing is forecast.")
    direction: Literal["above", "below"] = Field(
        "above", description="'above' for usage growing to a limit, 'below' for free space."
    )
    quantile: float = Field(0.9, gt=0.5, lt=1, description="Conservative quantile for the ETA.")


DEFAULT_ACTION_PAYLOAD = (
    '{"action": {{ action.name }}, "watch": {{ event.watch }}, "event_id": {{ event.id }}, '
    '"series": {{ event.series }}, "labels": {{ event.labels }}, "severity": {{ event.severity }}, '
    '"start": {{ event.start }}, "approved_by": {{ approved_by }}}'
)


class ActionConfig(_Model):
    """A remediation webhook an operator may approve for a watch's anomaly; it never runs by itself."""

    name: str = Field(..., description="Unique within the watch; used in the API path.")
    url: str = Field(..., description="http(s) URL of the automation system (a runbook runner ...).")
    description: str = Field("", max_length=500, description="What the action does, shown to the approver.")
    method: Literal["POST", "PUT"] = "POST"
    payload: str = Field(
        DEFAULT_ACTION_PAYLOAD,
        description="JSON body as a sandboxed Jinja2 template; every {{ ... }} is JSON-encoded, so write "
        "{{ event.labels.service }} without quotes. Names: event (id, watch, series, labels, start, end, "
        "peak_time, peak_score, severity, direction, observed, expected), explanation (id, title, summary, "
        "backend, created_at; all null when the event has none), action (name, watch), approved_by.",
    )
    headers: dict[str, SecretStr] = Field(
        default_factory=dict, description="Sent with the request (e.g. Authorization); never logged or recorded."
    )
    timeout: Duration = Field(Duration("10s"), description="How long to wait for the answer (at most 120s).")

    @field_validator("name")
    @classmethod
    def _action_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", v):
            raise ValueError("use 1-64 letters, digits, '_', '.', '-' starting with a letter or digit")
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+", v.strip()):
            raise ValueError(f"not an http(s) URL: {v[:100]!r}")
        return v.strip()

    @field_validator("payload")
    @classmethod
    def _payload(cls, v: str) -> str:
        from aiops.service.actions import check_payload_template

        check_payload_template(v)  # ValueError naming the problem
        return v

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: Duration) -> Duration:
        if not 0 < v.seconds <= 120:
            raise ValueError("must be more than 0s and at most 120s (the approving request waits for it)")
        return v


class WatchConfig(_Model):
    name: str = Field(..., description="Unique name; used in output labels and dashboard uids.")
    query: str = Field(..., description="PromQL range query.")
    step: Duration = Duration("5m")
    history: Duration = Field(Duration("7d"), description="How much history to fit on.")
    horizon: Duration = Field(Duration("1d"), description="How far to forecast.")
    fit_every: Duration = Duration("6h")
    infer_every: Duration = Duration("5m")
    max_series: int = Field(1000, ge=1, description="Refuse queries matching more series.")
    split_by: str | None = Field(
        None,
        description="Label to split the query by (e.g. instance) so no single query returns more "
        "than prometheus.max_series_per_query series; Prometheus sources only.",
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    detector: DetectorConfig = Field(default_factory=DetectorConfig)
    capacity: CapacityConfig | None = None
    related: list[str] = Field(
        default_factory=list, description="Queries whose series are root-cause candidates."
    )
    scope_labels: list[str] = Field(
        default_factory=lambda: ["namespace", "service", "job", "instance"],
        description="Labels that put series in the same scope for co-anomaly evidence.",
    )
    dashboard: bool = True
    actions: list[ActionConfig] = Field(
        default_factory=list, description="Remediation webhooks an operator may approve for this watch's anomalies."
    )

    @field_validator("split_by")
    @classmethod
    def _split_by(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", v):
            raise ValueError(f"must be a label name like instance, got {v!r}")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", v):
            raise ValueError(
                "use 1-64 letters, digits, '_', '.', '-' starting with a letter or digit"
            )
        return v

    @model_validator(mode="after")
    def _sizes(self) -> "WatchConfig":
        if self.history.td < 2 * self.step.td:
            raise ValueError(f"history ({self.history}) must cover at least 2 steps ({self.step})")
        names = [a.name for a in self.actions]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"action name(s) {', '.join(twice)} used twice; names must be unique within a watch")
        return self


class OpenAIBackendConfig(_Model):
    base_url: str = Field("http://localhost:8000/v1", description="OpenAI-compatible /v1 URL.")
    model: str = "default"
    api_key: SecretStr | None = None
    api_key_file: str | None = None
    timeout: Duration = Duration("30s")
    retries: int = Field(2, ge=0, le=10)


    @model_validator(mode="after")
    def _key(self) -> "OpenAIBackendConfig":
        _resolve_secret(self, "api_key")
        return self


class TransformersBackendConfig(_Model):
    model: str = Field("", description="Local path or hub id of a causal LM.")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1 ...")
    dtype: str = Field("auto", description="auto, float32, bfloat16, float16")
    max_new_tokens: int = Field(256, ge=1, le=8192)
    context_tokens: int = Field(4096, ge=256)


class ExplainConfig(_Model):
    backend: Literal["template", "transformers", "openai"] = "template"
    openai: OpenAIBackendConfig = Field(default_factory=OpenAIBackendConfig)
    transformers: TransformersBackendConfig = Field(default_factory=TransformersBackendConfig)
    runbooks_dir: str | None = Field(None, description="Folder of Markdown runbooks to index.")
    kb_index_dir: str = Field("aiops-output/kb", description="Where the BM25 index is kept.")
    max_candidates: int = Field(5, ge=1, le=50)
    service_graph: str | None = Field(None, description="Adjacency-matrix CSV of service calls.")
    recent: Duration = Field(
        Duration("1d"), description="Scheduled runs explain only events ongoing or ended within this window."
    )


class ServiceConfig(_Model):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    token: SecretStr | None = Field(None, description="Bearer token for write endpoints.")
    token_file: str | None = None
    read_token_required: bool = Field(False, description="Also require the token for reads.")
    allow_insecure_bind: bool = Field(
        False, description="Allow listening beyond loopback without a token."
    )
    max_body_bytes: int = Field(1_048_576, ge=1024)
    max_alerts_per_request: int = Field(1000, ge=1)
    json_logs: bool = False
    forward_url: str | None = Field(
        None, description='Webhook each alert explanation is POSTed to as Slack-style {"text": ...}.'
    )
    workers: int = Field(2, ge=0, le=64, description="Inbox worker threads in `aiops serve` (0 = none).")
    max_attempts: int = Field(5, ge=1, le=100, description="Explain attempts before an alert is dead-lettered.")
    retry_backoff: Duration = Field(Duration("5s"), description="First retry delay; doubles each attempt.")
    lease: Duration = Field(Duration("60s"), description="How long a worker's claim or the scheduler lead lasts.")
    scheduler_required: bool = Field(
        True, description="/readyz fails while no scheduler holds a live lease; false where none runs."
    )

    @model_validator(mode="after")
    def _token(self) -> "ServiceConfig":
        _resolve_secret(self, "token")
        return self


class ExecutorConfig(_Model):
    """Where fit and inference run: this process, or shards of series as Ray tasks."""

    kind: Literal["local", "ray"] = Field(
        "local", description="local: this process (GPU if present); ray: shards as Ray tasks."
    )
    address: str | None = Field(
        None, description="Ray cluster address (ray://head:10001 or auto); unset = start a local Ray."
    )
    num_cpus: float = Field(1.0, gt=0, description="CPUs each Ray shard task requests.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs each Ray shard task requests (fractions share one).")
    shard_size: int = Field(
        1000, ge=1, description="Series per shard; shards are by a stable hash of the series id, "
        "in both executors, so results do not depend on the executor.",
    )
    max_in_flight: int = Field(8, ge=1, le=1024, description="Most shard tasks submitted and not yet collected.")
    max_retries: int = Field(3, ge=0, le=20, description="Retries of a shard whose Ray worker died.")

    @model_validator(mode="after")
    def _address(self) -> "ExecutorConfig":
        if self.address is not None and self.kind != "ray":
            raise ValueError("address is only used with kind: ray")
        return self


class AiopsConfig(_Model):
    """The whole configuration file."""

    source: SourceConfig = Field(default_factory=SourceConfig, description="Where watches read series: prometheus, synthetic or file.")
    prometheus: PrometheusConfig = Field(default_factory=PrometheusConfig, description="Connection to Prometheus or a compatible query API.")
    grafana: GrafanaConfig = Field(default_factory=GrafanaConfig, description="Dashboards and annotations output.")
    store: StoreConfig = Field(default_factory=StoreConfig, description="Database for events, explanations, inbox, models.")
    watches: list[WatchConfig] = Field(default_factory=list, description="The queries aiops forecasts and watches.")
    explain: ExplainConfig = Field(default_factory=ExplainConfig, description="Evidence, root-cause ranking and the LLM backend.")
    service: ServiceConfig = Field(default_factory=ServiceConfig, description="The HTTP API, webhook and read API.")
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig, description="Where fit and inference run: local or Ray.")
    output_dir: str = Field("aiops-output", description="Where reports and files are written.")

    @model_validator(mode="after")
    def _unique_names(self) -> "AiopsConfig":
        seen: set[str] = set()
        for w in self.watches:
            if w.name in seen:
                raise ValueError(f"watch name {w.name!r} is used twice; names must be unique")
            seen.add(w.name)
        return self

    def watch(self, name: str) -> WatchConfig:
        for w in self.watches:
            if w.name == name:
                return w
        names = ", ".join(w.name for w in self.watches) or "none"
        raise ConfigError(f"no watch named {name!r}", hint=f"configured watches: {names}")


# --------------------------------------------------------------------------- loading


def _yaml_lines(text: str) -> dict[tuple, int]:
    """Map YAML paths (tuples of keys/indexes) to 1-based line numbers."""
    out: dict[tuple, int] = {}
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return out

    def walk(node: Any, path: tuple) -> None:
        out[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                out[path + (k.value,)] = k.start_mark.line + 1
                walk(v, path + (k.value,))
                out[path + (k.value,)] = k.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, path + (i,))

    if root is not None:
        walk(root, ())
    return out


def yaml_path(loc: tuple) -> str:
    """``('watches', 2, 'step')`` -> ``watches[2].step``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _env_overrides(environ: Mapping[str, str]) -> list[tuple[list[str | int], Any, str]]:
    out = []
    for key, raw in environ.items():
        if not key.upper().startswith(ENV_PREFIX) or key.upper() in ("AIOPS_CONFIG",):
            continue
        parts: list[str | int] = []
        for p in key[len(ENV_PREFIX):].split("__"):
            parts.append(int(p) if p.isdigit() else p.lower())
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        if isinstance(value, (dict, list)) is False and value is not None and not isinstance(
            value, (bool, int, float)
        ):
            value = str(value)
        out.append((parts, value, key))
    return sorted(out, key=lambda t: t[2])


def _set_path(data: dict, parts: list[str | int], value: Any, env_key: str) -> None:
    cur: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(part, int):
            if not isinstance(cur, list) or part >= len(cur):
                raise ConfigError(
                    f"environment variable {env_key} points at a list item that does not exist",
                    problems=[(env_key, f"index {part} is out of range")],
                )
            if last:
                cur[part] = value
            else:
                cur = cur[part]
        else:
            if not isinstance(cur, dict):
                raise ConfigError(
                    f"environment variable {env_key} does not match the config's shape",
                    problems=[(env_key, f"{part!r} is not inside a section")],
                )
            if last:
                cur[part] = value
            else:
                cur = cur.setdefault(part, {} if not isinstance(parts[i + 1], int) else [])


def _format_error(
    err: dict, lines: dict[tuple, int], source: str, origins: Mapping[tuple, str] | None = None
) -> tuple[str, str]:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    path = yaml_path(loc)
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if err["type"] == "extra_forbidden":
        msg = f"unknown key {loc[-1]!r} (misspelt? see docs/configuration.md)"
    elif err["type"] == "missing":
        msg = "required but missing"
    for n in range(len(loc), 0, -1):
        if origins and loc[:n] in origins:
            return path, f"{msg} (from {origins[loc[:n]]})"
    line = None
    probe = loc
    while probe and line is None:
        line = lines.get(probe)
        probe = probe[:-1]
    where = f" (line {line})" if line and source != "<defaults>" else ""
    return path, msg + where


def validate_config(
    data: Mapping[str, Any],
    *,
    source: str = "<config>",
    text: str = "",
    origins: Mapping[tuple, str] | None = None,
) -> AiopsConfig:
    """Validate a config mapping; raise ConfigError naming every problem by YAML path."""
    try:
        return AiopsConfig.model_validate(data)
    except ValidationError as exc:
        lines = _yaml_lines(text) if text else {}
        problems = [_format_error(e, lines, source, origins) for e in exc.errors()]
        raise ConfigError(
            f"{source}: {len(problems)} problem{'s' if len(problems) != 1 else ''} in the configuration",
            problems=problems,
        ) from None


def load_config(
    path: str | os.PathLike | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> AiopsConfig:
    """Load YAML (or the embedded default when ``path`` is None), apply env and CLI overrides.

    Args:
        path: the YAML file; None means the embedded demo default (synthetic data, no servers).
        environ: environment to read ``AIOPS_...`` overrides from (default ``os.environ``).
        overrides: dotted-path overrides from the CLI, e.g. ``{"prometheus.url": "..."}``.
    """
    if path is None:
        from importlib.resources import files

        text = files("aiops").joinpath("defaults/demo.yaml").read_text()
        source = "<embedded default>"
    else:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise ConfigError(
                f"cannot read config file {p}: {exc.strerror}",
                hint="pass an existing file, e.g. examples/aiops.yaml",
            ) from None
        source = str(p)
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{source}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    origins: dict[tuple, str] = {}
    for parts, value, key in _env_overrides(os.environ if environ is None else environ):
        _set_path(data, parts, value, key)
        origins[tuple(parts)] = f"environment variable {key}"
    for dotted, value in (overrides or {}).items():
        parts = [int(p) if p.isdigit() else p for p in dotted.split(".")]
        _set_path(data, parts, value, f"--{dotted}")
        origins[tuple(parts)] = "command line"
    return validate_config(data, source=source, text=text, origins=origins)
