#!/usr/bin/env python3
"""Checks charts/pavilion with the real Helm SDK (helm-python-sdk, Helm 4 inside).

  chart.py check             lint (strict), schema checks, renders of every mode, and every
                             rendered object validated against the Kubernetes 1.30 schemas
  chart.py install KUBECONFIG RELEASE NAMESPACE [VALUES_JSON]
                             installs the chart and prints the manifest

Called by e2e/tests/chart.rs, which also runs the installed configuration for real.
"""

import json
import sys
from pathlib import Path

import helm_python
import kubernetes_validate
import yaml

CHART = Path(__file__).resolve().parent.parent / "pavilion"
KUBE_VERSION = "1.30.0"


def fail(message):
    print(f"chart.py: {message}", file=sys.stderr)
    sys.exit(1)


def objects(rendered):
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for document in yaml.safe_load_all(text):
            if document:
                yield path, document


def validate(rendered, what):
    kinds = []
    for path, document in objects(rendered):
        try:
            kubernetes_validate.validate(document, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            fail(f"{what}: {path}: {document['kind']} {document['metadata']['name']}: {error.message} at {list(error.path)}")
        kinds.append(document["kind"])
    return kinds


def check():
    report = helm_python.lint(str(CHART), strict=True, namespace="pavilion-system")
    errors = report["errors"] + [m["error"] for m in report["messages"] if m["severity"] >= 2]
    if errors:
        fail(f"helm lint: {errors}")
    chart = helm_python.Chart.load(str(CHART))

    # The CRDs shipped are exactly what `pavilion-control crds` prints (checked by the caller
    # against the binary); here: every one is a valid CRD.
    crds = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    for name in crds:
        document = yaml.safe_load((CHART / "crds" / name).read_text())
        kubernetes_validate.validate(document, KUBE_VERSION, strict=True)

    # Values the schema must refuse.
    for bad in (
        {"certificates": {"mode": "self-signed"}},
        {"dataPlane": {"service": {"type": "Ingress", "port": 80}}},
        {"controlPlane": {"replicas": 0}},
        {"dataPlane": {"redis": "http://redis:6379"}},
        {"unknownKey": True},
    ):
        try:
            chart.validate_schema(bad)
        except helm_python.HelmValuesError:
            continue
        fail(f"values.schema.json accepted {bad}")

    modes = {
        "default": {},
        "generated certificates with the webhook": {"webhook": {"enabled": True}},
        "existing certificates, webhook, fixed replicas": {
            "certificates": {
                "mode": "existing",
                "controlPlaneSecret": "control-tls",
                "dataPlaneSecret": "data-tls",
            },
            "webhook": {"enabled": True, "caBundle": "Zm9v"},
            "dataPlane": {"autoscaling": {"enabled": False}, "redis": "redis://redis:6379",
                          "trustedProxies": ["10.0.0.0/8"]},
            "controlPlane": {"apiTokensSecret": "api-tokens", "mirrorTo": "nats://nats:4222"},
        },
    }
    summary = {}
    for what, values in modes.items():
        chart.validate_schema(values)
        rendered = chart.render(values, name="gw", namespace="pavilion-system", is_install=True)
        summary[what] = sorted(validate(rendered, what))
    try:
        chart.render({"certificates": {"mode": "existing"}}, name="gw", namespace="pavilion-system")
        fail("mode existing without secret names rendered")
    except helm_python.HelmRenderError:
        pass
    print(json.dumps({"crds": crds, "kinds": summary}))


def install(kubeconfig, release, namespace, values="{}"):
    config = helm_python.Config(kubeconfig_path=kubeconfig, namespace=namespace)
    chart = helm_python.Chart.load(str(CHART))
    # No kubelet runs here, so nothing could become ready: install without waiting.
    result = config.install(chart, release, json.loads(values), namespace=namespace,
                            create_namespace=True,
                            timeout=120)
    status = config.status(release)
    print(json.dumps({"manifest": result.get("manifest", ""), "summary": {k: v for k, v in status.items() if k != "manifest"}}))


if __name__ == "__main__":
    if sys.argv[1:2] == ["check"]:
        check()
    elif sys.argv[1:2] == ["install"] and len(sys.argv) in (5, 6):
        install(*sys.argv[2:])
    else:
        fail(__doc__)
