"""``uploads:`` in values: where uploaded files live, rendered for k8s (a ReadWriteMany PVC in every app
pod, or Redis) and compose (one named volume); the runtime side is tests/runtime/test_uploads.py."""

from __future__ import annotations

import subprocess

import yaml

from cl_scale.config.values import Values
from cl_scale.render import compose, k8s, scaffold
from tests.render.test_compose import CHECK
from tests.render.test_k8s_validate import manifest_docs


def test_shared_uploads_are_one_rwx_claim_mounted_by_every_app_pod():
    v = Values.model_validate({"uploads": {"storage": "shared", "size": "5Gi", "storageClassName": "efs"}})
    docs = manifest_docs(k8s.render(v))
    (pvc,) = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    assert pvc["spec"] == {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "5Gi"}},
                           "storageClassName": "efs"}
    pod = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "chainlit")["spec"]["template"]
    assert {"name": "uploads", "persistentVolumeClaim": {"claimName": "chainlit-uploads"}} in pod["spec"]["volumes"]
    assert {"name": "uploads", "mountPath": "/uploads"} in pod["spec"]["containers"][0]["volumeMounts"]
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "chainlit-env")["data"]
    assert cm["CL_SCALE_UPLOADS"] == "shared" and cm["CL_SCALE_UPLOADS_DIR"] == "/uploads"
    assert "mkdir -p /app/.files /app/.chainlit /uploads" in scaffold.render(v)["Dockerfile"]  # owned by the app user


def test_redis_uploads_and_the_local_default(tmp_path):
    cm = next(d for d in manifest_docs(k8s.render(Values.model_validate({"uploads": {"storage": "redis", "maxMB": 8}})))
              if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "chainlit-env")["data"]
    assert cm["CL_SCALE_UPLOADS"] == "redis" and cm["CL_SCALE_UPLOADS_MAX_MB"] == "8"
    assert "CL_SCALE_UPLOADS" not in k8s.render(Values())["configmap.yaml"]  # local: the runtime's default
    text = compose.render(Values.model_validate({"uploads": {"storage": "shared"}}))["compose.yaml"]
    f = tmp_path / "compose.yaml"
    f.write_text(text)
    out = subprocess.run([CHECK, "--builtin-schema", "vendor.compose-spec", str(f)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    doc = yaml.safe_load(text)
    assert "uploads" in doc["volumes"]
    for name in ("app-1", "app-2", "app-3"):
        assert doc["services"][name]["volumes"] == ["uploads:/uploads"]
        assert doc["services"][name]["environment"]["CL_SCALE_UPLOADS_DIR"] == "/uploads"
