"""Dashboards and the datasource, built in Python, and their idempotent provisioning.

Every dashboard has a fixed uid (:func:`dashboard_uid`) and carries the hash of its own content
in its description (``aiops_hash=...``). :func:`provision` therefore knows, without any state
of its own, whether a dashboard in Grafana is

* unchanged (same hash as we would write) -> nothing is sent, no new version;
* ours but out of date (its content still matches the hash it carries) -> saved over, with
  Grafana's version check on (a concurrent edit answers 412 and is not overwritten);
* edited in Grafana since we wrote it (content no longer matches its hash) -> left alone with a
  warning, unless ``grafana.overwrite_edited``.

Panels use the Prometheus datasource aiops provisions (uid ``grafana.datasource_uid``), which
points at aiops's read API, for the output series; the source series come from a Prometheus
datasource picked with the ``source`` dashboard variable.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import pandas as pd

from aiops.config import AiopsConfig, GrafanaConfig, WatchConfig
from aiops.errors import GrafanaError
from aiops.outputs import ANOMALY_SCORE, FORECAST, MODEL_ERROR, TIME_TO_THRESHOLD

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 39  # Grafana 10.4+/11 read it without migration prompts
DATASOURCE_NAME = "aiops"
OVERVIEW_UID = "aiops-overview"
PANEL_OBSERVED, PANEL_SCORE, PANEL_CAPACITY, PANEL_MODEL_ERROR = 1, 2, 3, 4
PANEL_TOP, PANEL_EXPLANATIONS = 1, 2
_HASH_RE = re.compile(r"\s*aiops_hash=([0-9a-f]{16})\s*$")


def load_schema(name: str) -> dict:
    """A JSON schema shipped in ``aiops/schemas`` (``grafana-dashboard``, ``grafana-api``)."""
    return json.loads(_schema_text(name))


@lru_cache(maxsize=None)
def _schema_text(name: str) -> str:
    return resources.files("aiops").joinpath("schemas", f"{name}.schema.json").read_text()


# --------------------------------------------------------------------------- naming


def dashboard_uid(watch: str) -> str:
    """Fixed uid of a watch's dashboard: ``aiops-<watch>``, at most 40 characters.

    Names that need sanitising or shortening get a hash suffix so two watches never collide.
    """
    clean = re.sub(r"[^A-Za-z0-9_-]", "-", watch)
    uid = f"aiops-{clean}"
    if clean != watch or len(uid) > 40:
        uid = f"{uid[:31]}-{hashlib.sha1(watch.encode()).hexdigest()[:8]}"
    return uid


def _grafana_duration(td: pd.Timedelta) -> str:
    """Grafana's relative-time units take one unit only (``90m``, not ``1h30m``)."""
    secs = max(1, int(round(td.total_seconds())))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs % size == 0:
            return f"{secs // size}{unit}"
    return f"{secs}s"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


# --------------------------------------------------------------------------- content hash


def content_hash(dashboard: dict) -> str:
    """Hash of what a dashboard shows: ignores ``id``, ``version`` and the hash marker."""
    d = {k: v for k, v in dashboard.items() if k not in ("id", "version")}
    d["description"] = _HASH_RE.sub("", d.get("description", ""))
    text = json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def stamped_hash(dashboard: dict) -> str | None:
    """The hash a dashboard carries in its description, if any."""
    m = _HASH_RE.search(dashboard.get("description") or "")
    return m.group(1) if m else None


def _stamp(dashboard: dict) -> dict:
    dashboard["description"] = f"{_HASH_RE.sub('', dashboard.get('description', ''))} aiops_hash={content_hash(dashboard)}".strip()
    return dashboard


# --------------------------------------------------------------------------- builders


def _ds(cfg: GrafanaConfig) -> dict:
    return {"type": "prometheus", "uid": cfg.datasource_uid}


def _target(ref: str, expr: str, ds: dict, *, legend: str | None = None, instant: bool = False) -> dict:
    t = {"refId": ref, "datasource": ds, "expr": expr, "range": not instant, "instant": instant}
    if legend is not None:
        t["legendFormat"] = legend
    return t


def _timeseries(pid: int, title: str, targets: list[dict], grid: tuple[int, int, int, int], ds: dict,
                *, unit: str = "short", custom: dict | None = None, thresholds: list[dict] | None = None,
                overrides: list[dict] | None = None, description: str = "") -> dict:
    defaults: dict[str, Any] = {"unit": unit, "custom": {"lineWidth": 1, "fillOpacity": 0, "spanNulls": False, **(custom or {})}}
    if thresholds:
        defaults["thresholds"] = {"mode": "absolute", "steps": thresholds}
    return {
        "id": pid, "type": "timeseries", "title": title, "description": description,
        "gridPos": dict(zip(("h", "w", "x", "y"), grid)), "datasource": ds, "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "none"}},
    }


def _by_names(names: list[str], props: list[dict]) -> dict:
    # byNames takes an object, so the override stays valid against the dashboard schema.
    return {"matcher": {"id": "byNames", "options": {"mode": "include", "names": names, "prefix": "", "readOnly": True}},
            "properties": props}


def _annotations(extra: list[dict]) -> dict:
    builtin = {"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
               "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard"}
    return {"list": [builtin, *extra]}


def _tag_annotation(name: str, tags: list[str], color: str) -> dict:
    return {"datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True, "hide": False,
            "iconColor": color, "name": name,
            "target": {"type": "tags", "tags": tags, "matchAny": False, "limit": 200}}


def _dashboard(uid: str, title: str, description: str, panels: list[dict], *, tags: list[str],
               time_from: str, time_to: str, annotations: list[dict], variables: list[dict],
               links: list[dict] | None = None) -> dict:
    d = {
        "uid": uid, "title": title, "description": description, "tags": tags, "timezone": "browser",
        "editable": True, "graphTooltip": 1, "schemaVersion": SCHEMA_VERSION, "refresh": "1m",
        "time": {"from": time_from, "to": time_to}, "templating": {"list": variables},
        "annotations": _annotations(annotations), "panels": panels, "links": links or [],
    }
    return _stamp(d)


def watch_dashboard(watch: WatchConfig, cfg: GrafanaConfig) -> dict:
    """The dashboard of one watch: observed with forecast band, anomaly score, events as
    annotations (tags ``watch:<name>``), time to threshold when the watch has capacity."""
    ds = _ds(cfg)
    sel = f'watch="{_label(watch.name)}"'
    source = {"type": "prometheus", "uid": "${source}"}
    observed = _timeseries(
        PANEL_OBSERVED, "Observed and forecast",
        [_target("A", watch.query, source),
         _target("B", f'{FORECAST}{{{sel},bound="yhat"}}', ds, legend="yhat"),
         _target("C", f'{FORECAST}{{{sel},bound="lower"}}', ds, legend="lower"),
         _target("D", f'{FORECAST}{{{sel},bound="upper"}}', ds, legend="upper")],
        (10, 24, 0, 0), {"type": "datasource", "uid": "-- Mixed --"},
        overrides=[
            _by_names(["lower", "upper"], [{"id": "color", "value": {"mode": "fixed", "fixedColor": "#8AB8FF"}},
                                           {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [4, 4]}}]),
            _by_names(["yhat"], [{"id": "color", "value": {"mode": "fixed", "fixedColor": "#5794F2"}},
                                 {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 4]}}]),
        ],
        description=f"Source query: {watch.query}. Forecast band at level {watch.model.level}.",
    )
    det = watch.detector
    score = _timeseries(
        PANEL_SCORE, "Anomaly score", [_target("A", f"{ANOMALY_SCORE}{{{sel}}}", ds)],
        (8, 24 if watch.capacity is None else 16, 0, 10), ds,
        custom={"thresholdsStyle": {"mode": "line"}},
        thresholds=[{"value": None, "color": "green"}, {"value": det.threshold, "color": "orange"},
                    {"value": det.critical_score, "color": "red"}],
        description="1.0 = edge of the calibrated band; events start at the threshold line.",
    )
    panels = [observed, score]
    if watch.capacity is not None:
        panels.append({
            "id": PANEL_CAPACITY, "type": "stat", "title": "Time to threshold",
            "description": f"Until the forecast goes {watch.capacity.direction} {watch.capacity.threshold}.",
            "gridPos": {"h": 8, "w": 8, "x": 16, "y": 10}, "datasource": ds,
            "targets": [_target("A", f"{TIME_TO_THRESHOLD}{{{sel}}}", ds, instant=True)],
            "fieldConfig": {"defaults": {"unit": "s", "thresholds": {"mode": "absolute", "steps": [
                {"value": None, "color": "red"}, {"value": 86400, "color": "orange"},
                {"value": 7 * 86400, "color": "green"}]}}, "overrides": []},
            "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "value", "graphMode": "none", "textMode": "auto"},
        })
    panels.append(_timeseries(PANEL_MODEL_ERROR, "Model error", [_target("A", f"{MODEL_ERROR}{{{sel}}}", ds)],
                              (6, 24, 0, 18), ds))
    span = max(watch.horizon.td * 3, pd.Timedelta("6h"))
    variable = {"type": "datasource", "name": "source", "label": "Source Prometheus", "query": "prometheus",
                "regex": f"/^(?!{re.escape(DATASOURCE_NAME)}$).*/", "hide": 0, "refresh": 1, "options": []}
    return _dashboard(
        dashboard_uid(watch.name), f"aiops: {watch.name}",
        f"Forecast, anomaly score and events of watch {watch.name}. Generated by aiops; edits are kept "
        f"unless grafana.overwrite_edited.",
        panels, tags=["aiops", f"watch:{watch.name}"],
        time_from=f"now-{_grafana_duration(span)}", time_to=f"now+{_grafana_duration(watch.horizon.td)}",
        annotations=[_tag_annotation("aiops anomalies", ["aiops", f"watch:{watch.name}"], "red")],
        variables=[variable],
    )


def overview_dashboard(config: AiopsConfig) -> dict:
    """Top anomalies now (``topk(10, aiops_anomaly_score)``) and recent explanations."""
    ds = _ds(config.grafana)
    top = {
        "id": PANEL_TOP, "type": "bargauge", "title": "Top anomalies now",
        "gridPos": {"h": 10, "w": 12, "x": 0, "y": 0}, "datasource": ds,
        "targets": [_target("A", f"topk(10, {ANOMALY_SCORE})", ds, legend="{{watch}} {{source_metric}}", instant=True)],
        "fieldConfig": {"defaults": {"unit": "short", "min": 0, "thresholds": {"mode": "absolute", "steps": [
            {"value": None, "color": "green"}, {"value": 1, "color": "orange"}, {"value": 3, "color": "red"}]}},
            "overrides": []},
        "options": {"orientation": "horizontal", "displayMode": "gradient",
                    "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
    }
    explanations = {
        "id": PANEL_EXPLANATIONS, "type": "annolist", "title": "Recent explanations",
        "gridPos": {"h": 10, "w": 12, "x": 12, "y": 0},
        "options": {"onlyFromThisDashboard": False, "onlyInTimeRange": False, "tags": ["aiops"], "limit": 20,
                    "showUser": False, "showTime": True, "showTags": True, "navigateToPanel": True,
                    "navigateBefore": "10m", "navigateAfter": "10m"},
    }
    links = [{"title": f"aiops: {w.name}", "type": "link", "url": f"/d/{dashboard_uid(w.name)}", "icon": "dashboard",
              "tags": [], "asDropdown": False, "targetBlank": False, "includeVars": False, "keepTime": True,
              "tooltip": w.query}
             for w in config.watches if w.dashboard]
    return _dashboard(
        OVERVIEW_UID, "aiops: overview", "Top anomalies now and recent explanations. Generated by aiops.",
        [top, explanations], tags=["aiops"], time_from="now-24h", time_to="now",
        annotations=[_tag_annotation("aiops anomalies", ["aiops", "anomaly"], "red")], variables=[], links=links,
    )


def build_dashboards(config: AiopsConfig) -> list[dict]:
    """The overview plus one dashboard per watch with ``dashboard: true``."""
    return [overview_dashboard(config)] + [
        watch_dashboard(w, config.grafana) for w in config.watches if w.dashboard
    ]


def datasource_url(config: AiopsConfig) -> str:
    """URL Grafana uses for aiops's read API: ``grafana.public_url`` or the service address."""
    if config.grafana.public_url:
        return config.grafana.public_url.rstrip("/")
    host = config.service.host
    if host in ("0.0.0.0", "::", ""):
        logger.warning("service.host is %s; set grafana.public_url to the address Grafana can reach", host or "empty")
        host = "localhost"
    return f"http://{host}:{config.service.port}/prometheus"


def datasource_body(config: AiopsConfig, *, with_secrets: bool = True) -> dict:
    """``AddDataSourceCommand`` for the Prometheus datasource over aiops's read API."""
    steps = [w.step.td for w in config.watches]
    json_data: dict[str, Any] = {"httpMethod": "GET"}
    if steps:
        json_data["timeInterval"] = _grafana_duration(min(steps))
    body: dict[str, Any] = {"name": DATASOURCE_NAME, "type": "prometheus", "access": "proxy",
                            "uid": config.grafana.datasource_uid, "url": datasource_url(config),
                            "isDefault": False, "jsonData": json_data}
    svc = config.service
    if svc.read_token_required and svc.token is not None:
        json_data["httpHeaderName1"] = "Authorization"
        if with_secrets:
            body["secureJsonData"] = {"httpHeaderValue1": f"Bearer {svc.token.get_secret_value()}"}
    return body


# --------------------------------------------------------------------------- provisioning


@dataclass
class ProvisionReport:
    """What :func:`provision` did, by object (``folder:aiops``, ``dashboard:aiops-cpu`` ...)."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped_edited: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self.__dict__.items()}


def provision(config: AiopsConfig, client: Any) -> ProvisionReport:
    """Create or update the folder, the datasource and the dashboards; idempotent.

    Args:
        config: the aiops configuration (``grafana``, ``service`` and ``watches`` are used).
        client: a :class:`aiops.grafana.client.GrafanaClient`.

    Raises:
        GrafanaError: Grafana refused a request (401, 409 ...) or cannot be reached.
    """
    report = ProvisionReport()
    cfg = config.grafana
    _provision_folder(cfg, client, report)
    _provision_datasource(config, client, report)
    for dash in build_dashboards(config):
        _provision_dashboard(cfg, client, dash, report)
    logger.info("grafana provisioning: %s", {k: len(v) for k, v in report.to_dict().items()})
    return report


def _provision_folder(cfg: GrafanaConfig, client: Any, report: ProvisionReport) -> None:
    name = f"folder:{cfg.folder_uid}"
    if client.get_folder(cfg.folder_uid) is None:
        client.create_folder(cfg.folder_uid, cfg.folder_title)
        report.created.append(name)
    else:
        report.unchanged.append(name)


def _provision_datasource(config: AiopsConfig, client: Any, report: ProvisionReport) -> None:
    want = datasource_body(config)
    name = f"datasource:{want['uid']}"
    have = client.get_datasource(want["uid"])
    if have is None:
        client.create_datasource(want)
        report.created.append(name)
        return
    keys = ("name", "type", "access", "url", "isDefault", "jsonData")
    if all(have.get(k) == want.get(k) for k in keys):
        report.unchanged.append(name)
        return
    client.update_datasource(want["uid"], {**want, "version": int(have.get("version") or 1)})
    report.updated.append(name)


def _provision_dashboard(cfg: GrafanaConfig, client: Any, dash: dict, report: ProvisionReport) -> None:
    uid = dash["uid"]
    name = f"dashboard:{uid}"
    have = client.get_dashboard(uid)
    if have is None:
        client.save_dashboard(dash, folder_uid=cfg.folder_uid, overwrite=False, message="created by aiops")
        report.created.append(name)
        return
    current = have.get("dashboard") or {}
    current_folder = (have.get("meta") or {}).get("folderUid") or ""
    ours = stamped_hash(dash)
    if stamped_hash(current) == ours and content_hash(current) == ours and current_folder == cfg.folder_uid:
        report.unchanged.append(name)
        return
    edited = stamped_hash(current) is None or content_hash(current) != stamped_hash(current)
    if edited and not cfg.overwrite_edited:
        logger.warning(
            "dashboard %s was edited in Grafana (version %s) since aiops wrote it; not overwriting "
            "(set grafana.overwrite_edited to replace it)", uid, current.get("version"),
        )
        report.skipped_edited.append(name)
        return
    body = copy.deepcopy(dash)
    body["id"] = current.get("id")
    body["version"] = current.get("version")
    try:
        client.save_dashboard(body, folder_uid=cfg.folder_uid, overwrite=bool(edited and cfg.overwrite_edited),
                              message="updated by aiops")
    except GrafanaError as exc:
        if exc.status == 412 and not cfg.overwrite_edited:
            logger.warning("dashboard %s changed in Grafana while provisioning; not overwriting", uid)
            report.skipped_edited.append(name)
            return
        raise
    report.updated.append(name)
