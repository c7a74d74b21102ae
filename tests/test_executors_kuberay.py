"""deploy/kuberay/: the scheduler's config is valid and points at the RayCluster it ships with."""

from __future__ import annotations

from pathlib import Path

import yaml

from aiops.config import validate_config

KUBERAY = Path(__file__).resolve().parents[1] / "deploy" / "kuberay"


def docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((KUBERAY / name).read_text()) if d]


def test_scheduler_config_is_valid_and_targets_the_raycluster_head():
    (cluster,) = docs("raycluster.yaml")
    cm, deploy = docs("aiops-scheduler.yaml")
    cfg = validate_config(yaml.safe_load(cm["data"]["aiops.yaml"]), source="aiops-scheduler.yaml")
    assert cfg.executor.kind == "ray"
    # KubeRay names the head service <cluster>-head-svc; 10001 is the Ray client port
    assert cfg.executor.address == f"ray://{cluster['metadata']['name']}-head-svc:10001"
    head = cluster["spec"]["headGroupSpec"]
    assert 10001 in [p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]]
    assert all(w.split_by for w in cfg.watches)
    # one image everywhere, so the Ray versions on both ends of the client connection match
    images = {c["image"] for c in head["template"]["spec"]["containers"]}
    for group in cluster["spec"]["workerGroupSpecs"]:
        images |= {c["image"] for c in group["template"]["spec"]["containers"]}
    images |= {c["image"] for c in deploy["spec"]["template"]["spec"]["containers"]}
    assert len(images) == 1
    assert cluster["spec"]["rayVersion"] in images.pop()
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:2] == ["aiops", "scheduler"]
    mount = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}["config"]
    assert container["command"][-1] == f"{mount}/aiops.yaml"


def test_gpu_worker_group_advertises_the_gpus_it_requests():
    (cluster,) = docs("raycluster.yaml")
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    gpu = groups["gpu"]
    limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu["rayStartParams"]["num-gpus"] == limits["nvidia.com/gpu"]
    assert cluster["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # no shard tasks on the head
    for g in groups.values():
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
