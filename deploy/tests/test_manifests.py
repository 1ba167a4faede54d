"""Our own assertions on the built manifests (deploy/check.sh builds them into $BUILT):
what every pod promises (non-root, read-only root, no capabilities, limits, probes), that GPU
pods select and tolerate GPU nodes, that every namespace starts from deny-all, and that every
setting, flag, port and probe path names something the binaries really read or serve."""

import os
import pathlib
import re
import unittest

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUILT = pathlib.Path(os.environ["BUILT"])


def load(name):
    with open(BUILT / f"{name}.yaml") as f:
        return [d for d in yaml.safe_load_all(f) if d]


OVERLAYS = sorted(p.stem for p in BUILT.glob("*.yaml"))


def find(docs, kind, name=None):
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs, kind, name):
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_specs(docs):
    """(object, pod spec, long_running) for every object that makes pods."""
    for d in docs:
        k = d["kind"]
        if k in ("Deployment", "StatefulSet", "DaemonSet") or (k == "Rollout" and "template" in d["spec"]):
            yield d, d["spec"]["template"]["spec"], True
        elif k == "Job":
            yield d, d["spec"]["template"]["spec"], False
        elif k == "CronJob":
            yield d, d["spec"]["jobTemplate"]["spec"]["template"]["spec"], False


def seconds(text):
    m = re.fullmatch(r"(\d+)s", text)
    assert m, f"`{text}` is not a whole number of seconds"
    return int(m.group(1))


def depth_sql():
    """The run-queue depth query the host exports (host/src/journal/queue.rs, DEPTH_SQL)."""
    src = (ROOT / "host/src/journal/queue.rs").read_text()
    return re.search(r'pub const DEPTH_SQL: &str = "([^"]*)";', src).group(1)


def config_keys():
    """Keys `sandgraph serve` reads (host/src/api/config.rs), as SANDGRAPH_<KEY>."""
    src = (ROOT / "host/src/api/config.rs").read_text()
    keys = set(re.findall(r'(?:parse\(\s*src,\s*|path\(|src\s*\.get\()"([a-z_]+)"', src))
    assert "listen" in keys and "shutdown_grace" in keys, keys
    # Flags of `sandgraph serve` itself that also read the environment (the models file).
    cli = (ROOT / "host/src/cli/serve.rs").read_text()
    flags = set(re.findall(r'env = "(SANDGRAPH_[A-Z_]+)"', cli))
    assert "SANDGRAPH_MODELS" in flags, flags
    return {f"SANDGRAPH_{k.upper()}" for k in keys} | flags


def infer_serve_flags():
    """Flags of `sandgraph-infer serve` (inference/src/cli/serve.rs)."""
    src = (ROOT / "inference/src/cli/serve.rs").read_text()
    body = src.split("pub struct ServeArgs", 1)[1].split("\n}\n", 1)[0]
    return {"--" + f.replace("_", "-") for f in re.findall(r"^\s+(\w+):", body, re.M)}


class EveryOverlay(unittest.TestCase):
    def test_every_container_is_locked_down_with_limits(self):
        for o in OVERLAYS:
            docs = load(o)
            for obj, spec, long_running in pod_specs(docs):
                where = f"{o}: {obj['kind']}/{obj['metadata']['name']}"
                self.assertIs(spec.get("automountServiceAccountToken"), False, where)
                psc = spec.get("securityContext", {})
                self.assertEqual(psc.get("seccompProfile", {}).get("type"), "RuntimeDefault", where)
                for c in spec.get("initContainers", []) + spec["containers"]:
                    at = f"{where} container {c['name']}"
                    sc = c.get("securityContext", {})
                    self.assertTrue(sc.get("runAsNonRoot", psc.get("runAsNonRoot")), at)
                    uid = sc.get("runAsUser", psc.get("runAsUser"))
                    self.assertIsInstance(uid, int, at)
                    self.assertGreater(uid, 0, at)
                    self.assertIs(sc.get("readOnlyRootFilesystem"), True, at)
                    self.assertIs(sc.get("allowPrivilegeEscalation"), False, at)
                    self.assertIn("ALL", sc.get("capabilities", {}).get("drop", []), at)
                    self.assertFalse(sc.get("capabilities", {}).get("add"), at)
                    for part in ("requests", "limits"):
                        for r in ("cpu", "memory"):
                            self.assertIn(r, c.get("resources", {}).get(part, {}), f"{at} {part}.{r}")
                    if long_running:
                        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                            self.assertIn(probe, c, at)

    def test_service_accounts_mount_no_token_and_the_namespace_is_restricted(self):
        for o in OVERLAYS:
            docs = load(o)
            for sa in find(docs, "ServiceAccount"):
                self.assertIs(sa.get("automountServiceAccountToken"), False, f"{o}: {sa['metadata']['name']}")
            ns = one(docs, "Namespace", "sandgraph")
            labels = ns["metadata"]["labels"]
            self.assertEqual(labels["pod-security.kubernetes.io/enforce"], "restricted", o)
            self.assertTrue(find(docs, "ResourceQuota") and find(docs, "LimitRange"), o)

    def test_every_namespace_with_pods_starts_from_deny_all(self):
        for o in OVERLAYS:
            docs = load(o)
            namespaces = {obj["metadata"].get("namespace") for obj, _, _ in pod_specs(docs)}
            for ns in namespaces:
                deny = [
                    p
                    for p in find(docs, "NetworkPolicy")
                    if p["metadata"].get("namespace") == ns
                    and p["spec"]["podSelector"] == {}
                    and sorted(p["spec"]["policyTypes"]) == ["Egress", "Ingress"]
                    and not p["spec"].get("ingress")
                    and not p["spec"].get("egress")
                ]
                self.assertTrue(deny, f"{o}: no default-deny NetworkPolicy in namespace {ns}")

    def test_no_plain_secret_with_data_in_git(self):
        for o in OVERLAYS:
            for s in find(load(o), "Secret"):
                self.assertFalse(s.get("data") or s.get("stringData"), f"{o}: Secret {s['metadata']['name']}")

    def test_no_target_is_scaled_by_both_an_hpa_and_a_scaledobject(self):
        for o in OVERLAYS:
            docs = load(o)
            hpa = {(h["spec"]["scaleTargetRef"]["kind"], h["spec"]["scaleTargetRef"]["name"]) for h in find(docs, "HorizontalPodAutoscaler")}
            keda = {
                (s["spec"]["scaleTargetRef"].get("kind", "Deployment"), s["spec"]["scaleTargetRef"]["name"])
                for s in find(docs, "ScaledObject")
            }
            self.assertFalse(hpa & keda, f"{o}: {hpa & keda}")

    def test_host_settings_probes_and_grace_are_real(self):
        keys = config_keys()
        for o in OVERLAYS:
            docs = load(o)
            cm = one(docs, "ConfigMap", next(d["metadata"]["name"] for d in find(docs, "ConfigMap") if d["metadata"]["name"].startswith("sandgraph-host")))
            for k in cm["data"]:
                if k.startswith("SANDGRAPH_"):
                    self.assertIn(k, keys, f"{o}: {k} is not read by sandgraph serve")
            host = one(docs, "Deployment", "sandgraph-host")
            spec = host["spec"]["template"]["spec"]
            c = spec["containers"][0]
            self.assertEqual(c["args"], ["serve"])
            port = int(cm["data"]["SANDGRAPH_LISTEN"].rsplit(":", 1)[1])
            self.assertEqual(c["ports"][0]["containerPort"], port)
            self.assertEqual(c["startupProbe"]["httpGet"]["path"], "/healthz")
            self.assertEqual(c["livenessProbe"]["httpGet"]["path"], "/healthz")
            self.assertEqual(c["readinessProbe"]["httpGet"]["path"], "/readyz")
            drain = seconds(cm["data"]["SANDGRAPH_SHUTDOWN_GRACE"])
            pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
            self.assertGreater(spec["terminationGracePeriodSeconds"], drain + pre_stop, o)
            mounts = {m["mountPath"] for m in c["volumeMounts"]}
            env = {e["name"]: e for e in c.get("env", [])}
            if "SANDGRAPH_JOURNAL" in env:
                # A shared PostgreSQL journal: its URL from a Secret, several replicas, and KEDA
                # scaling them on the run queue with the query the host itself uses.
                ref = env["SANDGRAPH_JOURNAL"]["valueFrom"]["secretKeyRef"]
                self.assertIn(ref["name"], {d["spec"]["target"]["name"] for d in find(docs, "ExternalSecret")}, o)
                self.assertGreaterEqual(host["spec"]["replicas"], 2, o)
                scaled = [s for s in find(docs, "ScaledObject") if s["spec"]["scaleTargetRef"]["name"] == "sandgraph-host"]
                self.assertEqual(len(scaled), 1, o)
                trigger = scaled[0]["spec"]["triggers"][0]
                self.assertEqual(trigger["type"], "postgresql", o)
                self.assertEqual(trigger["metadata"]["query"], depth_sql(), o)
                auth = one(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
                self.assertEqual(auth["spec"]["secretTargetRef"][0]["name"], ref["name"], o)
                self.assertEqual(scaled[0]["spec"]["minReplicaCount"], host["spec"]["replicas"], o)
            else:
                journal = cm["data"]["SANDGRAPH_JOURNAL"]
                self.assertTrue(any(journal.startswith(m + "/") for m in mounts), f"{o}: journal not on a volume")
                # sled is single-writer: one host pod, replaced (not surged) on update.
                self.assertEqual(host["spec"]["replicas"], 1, o)
                self.assertEqual(host["spec"]["strategy"]["type"], "Recreate", o)
                self.assertFalse([s for s in find(docs, "ScaledObject") if s["spec"]["scaleTargetRef"]["name"] == "sandgraph-host"], o)
            # The models file and the secrets folder are mounted read-only from their objects.
            volumes = {v["name"]: v for v in spec["volumes"]}
            by_path = {m["mountPath"]: m for m in c["volumeMounts"]}
            models_dir, models_file = cm["data"]["SANDGRAPH_MODELS"].rsplit("/", 1)
            m = by_path[models_dir]
            self.assertTrue(m.get("readOnly"), o)
            models_cm = one(docs, "ConfigMap", volumes[m["name"]]["configMap"]["name"])
            self.assertIn("provider: openai", models_cm["data"][models_file], o)
            self.assertIn("http://sandgraph-inference:", models_cm["data"][models_file], o)
            m = by_path[cm["data"]["SANDGRAPH_SECRETS_DIR"]]
            self.assertTrue(m.get("readOnly"), o)
            self.assertIn("secretName", volumes[m["name"]]["secret"], o)
            self.assertIn("/opt/sandgraph/agents", cm["data"]["SANDGRAPH_TOOLS"].split(","), o)
            model_url = cm["data"]["SANDGRAPH_MODEL_URL"]
            svc = one(docs, "Service", "sandgraph-inference")
            self.assertEqual(model_url, f"http://sandgraph-inference:{svc['spec']['ports'][0]['port']}")

    def test_inference_flags_probes_and_hardware(self):
        flags = infer_serve_flags()
        for o in OVERLAYS:
            docs = load(o)
            d = one(docs, "Deployment", "sandgraph-inference")
            spec = d["spec"]["template"]["spec"]
            c = spec["containers"][0]
            args = c["args"]
            self.assertEqual(args[0], "serve")
            for a in args[1:]:
                if a.startswith("--"):
                    self.assertIn(a, flags, f"{o}: sandgraph-infer serve has no {a}")
            listen = args[args.index("--listen") + 1]
            self.assertEqual(c["ports"][0]["containerPort"], int(listen.rsplit(":", 1)[1]))
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                self.assertEqual(c[probe]["httpGet"]["path"], "/health", f"{o} {probe}")
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            self.assertTrue(env["SANDGRAPH_MODEL"].startswith("/models/"))
            backend = args[args.index("--backend") + 1]
            limits = c["resources"]["limits"]
            if o.startswith("prod"):
                self.assertEqual(backend, "wgpu", o)
                self.assertEqual(spec["nodeSelector"].get("nvidia.com/gpu.present"), "true", o)
                tol = [t for t in spec.get("tolerations", []) if t.get("key") == "nvidia.com/gpu"]
                self.assertEqual(len(tol), 1, o)
                self.assertEqual(tol[0]["operator"], "Exists", o)
                self.assertNotIn("value", tol[0], o)
                self.assertEqual(str(limits["nvidia.com/gpu"]), "1", o)
                self.assertIn("graphics", env["NVIDIA_DRIVER_CAPABILITIES"].split(","), o)
            else:
                self.assertEqual(backend, "cpu", o)
                self.assertNotIn("nvidia.com/gpu", limits, o)
                self.assertNotIn("nodeSelector", spec, o)
            load_budget = c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"]
            for s in find(docs, "ScaledObject"):
                self.assertGreater(s["spec"]["cooldownPeriod"], load_budget, f"{o}: KEDA cooldown vs model load")
            for h in find(docs, "HorizontalPodAutoscaler"):
                down = h["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"]
                self.assertGreater(down, load_budget, f"{o}: HPA scale-down vs model load")

    def test_network_paths_of_the_data_flow_exist(self):
        for o in OVERLAYS:
            names = {p["metadata"]["name"] for p in find(load(o), "NetworkPolicy")}
            for n in ("default-deny", "allow-dns", "host-from-ingress", "host-to-inference", "inference-from-host", "tool-egress"):
                self.assertIn(n, names, o)
            if o.startswith("prod"):
                self.assertIn("host-to-journal-db", names, o)

    def test_custom_resources_have_their_required_fields(self):
        # No CRD schema is obtainable offline from PyPI or Debian: these are the fields each
        # operator refuses the object without (checked by hand against their CRDs).
        required = {
            "ExternalSecret": [("spec", "secretStoreRef", "name"), ("spec", "target", "name")],
            "SealedSecret": [("spec", "encryptedData"), ("spec", "template")],
            "ServiceMonitor": [("spec", "selector"), ("spec", "endpoints")],
            "PrometheusRule": [("spec", "groups")],
            "ScaledObject": [("spec", "scaleTargetRef", "name"), ("spec", "triggers")],
            "Rollout": [("spec", "selector"), ("spec", "strategy", "canary", "steps")],
            "AnalysisTemplate": [("spec", "metrics")],
            "CiliumNetworkPolicy": [("spec", "endpointSelector"), ("spec", "egress")],
        }
        seen = set()
        for o in OVERLAYS:
            for d in load(o):
                for path in required.get(d["kind"], []):
                    v = d
                    for p in path:
                        self.assertIn(p, v, f"{o}: {d['kind']}/{d['metadata']['name']} lacks {'.'.join(path)}")
                        v = v[p]
                    seen.add(d["kind"])
        for kind in ("ExternalSecret", "ServiceMonitor", "PrometheusRule", "ScaledObject", "Rollout", "AnalysisTemplate"):
            self.assertIn(kind, seen)


if __name__ == "__main__":
    unittest.main()
