"""Issue 14: the deployment files in examples/deploy/ are real, and a real
container runs from a lazy mount (podman_harness.py).

- The Kubernetes manifests, as `kubectl kustomize` builds them, validate
  against the Kubernetes API's schema: every field known to the API models
  of Debian's python3-kubernetes (generated from the API's OpenAPI spec),
  every type right, every required field there (the models' own checks).
- The systemd unit passes `systemd-analyze verify`.
- What the DaemonSet does, done here: 4 nodes in network namespaces, each
  a shared nydusd started with the argv nydus-snapshotter uses and the
  ConfigMap's p2p.json (only paths, the DNS name and the secret file filled
  in), images mounted through the API with the ConfigMap's nydusd config as
  the snapshotter fills it in; membership from dnsmasq answering the
  headless Service's name. Under load one node is scaled down (out of DNS,
  SIGTERM: it drains) and one is added: no failed read, no wrong byte.
"""
import concurrent.futures
import json
import pathlib
import re
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

import p2p_harness as ph
import podman_harness as pm

DEPLOY = ph.ROOT / "examples" / "deploy"
KUBE = DEPLOY / "kubernetes"


def kustomize_build():
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.fail("kubectl not found (Debian package kubernetes-client; test/install-deps.sh)")
    done = subprocess.run([kubectl, "kustomize", str(KUBE)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    import yaml
    return [d for d in yaml.safe_load_all(done.stdout) if d]


_PRIMITIVES = {"str": str, "int": int, "float": (int, float), "bool": bool, "object": object,
               "datetime": str, "date": str}


def schema_errors(value, type_name, where):
    """Where `value` breaks the python3-kubernetes model `type_name`: an
    unknown field, a wrong type (recursively)."""
    import kubernetes.client as k8s
    if type_name in _PRIMITIVES:
        ok = isinstance(value, _PRIMITIVES[type_name]) and not (type_name in ("int", "float") and
                                                                 isinstance(value, bool))
        return [] if ok else [f"{where}: {value!r} is not {type_name}"]
    if m := re.fullmatch(r"list\[(.*)\]", type_name):
        if not isinstance(value, list):
            return [f"{where}: not a list"]
        return [e for i, v in enumerate(value) for e in schema_errors(v, m.group(1), f"{where}[{i}]")]
    if m := re.fullmatch(r"dict\(([^,]+), (.*)\)", type_name):
        if not isinstance(value, dict):
            return [f"{where}: not a map"]
        return [e for key, v in value.items() for e in schema_errors(v, m.group(2), f"{where}.{key}")]
    model = getattr(k8s, type_name)
    if not isinstance(value, dict):
        return [f"{where}: not an object ({type_name})"]
    by_json = {json_name: attr for attr, json_name in model.attribute_map.items()}
    errors = []
    for key, v in value.items():
        if key not in by_json:
            errors.append(f"{where}.{key}: no such field in {type_name}")
        else:
            errors += schema_errors(v, model.openapi_types[by_json[key]], f"{where}.{key}")
    return errors


def validate(document):
    """Schema errors of one manifest; the models' constructors then check
    required fields and enumerations (client-side validation)."""
    import kubernetes.client as k8s
    kind, api = document.get("kind", ""), document.get("apiVersion", "")
    version = api.split("/")[-1]
    type_name = f"{version[0].upper()}{version[1:]}{kind}"
    assert hasattr(k8s, type_name), f"no model {type_name} for {api} {kind}"
    errors = schema_errors(document, type_name, kind)
    try:
        k8s.ApiClient()._ApiClient__deserialize(document, type_name)
    except (ValueError, TypeError) as e:
        errors.append(f"{kind}: {e}")
    return errors


def test_kubernetes_manifests_validate_against_the_api_schema():
    documents = kustomize_build()
    kinds = sorted(d["kind"] for d in documents)
    assert kinds == ["ConfigMap", "DaemonSet", "Namespace", "Service"], kinds
    for d in documents:
        assert validate(d) == [], (d["kind"], validate(d))
    # The validator does catch what it should: a misspelt field, a wrong type.
    ds = next(d for d in documents if d["kind"] == "DaemonSet")
    broken = json.loads(json.dumps(ds))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    broken["spec"]["template"]["spec"]["hostNetwork"] = "yes"
    errors = validate(broken)
    assert any("readinessProbes" in e for e in errors) and any("hostNetwork" in e for e in errors), errors
    missing = json.loads(json.dumps(ds))
    del missing["spec"]["selector"]
    assert validate(missing), "a DaemonSet without a selector passed"

    # What the DaemonSet and the Service promise each other and the daemon.
    cm = next(d for d in documents if d["kind"] == "ConfigMap")
    assert json.loads(cm["data"]["p2p.json"]) == json.loads((KUBE / "p2p.json").read_text())
    p2p = json.loads(cm["data"]["p2p.json"])["p2p"]
    svc = next(d for d in documents if d["kind"] == "Service")
    assert svc["spec"]["clusterIP"] == "None"
    name = f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local"
    assert p2p["peers_dns"] == f"{name}:{svc['spec']['ports'][0]['port']}"
    pod = ds["spec"]["template"]["spec"]
    container = pod["containers"][0]
    health_port = int(p2p["health_listen"].rsplit(":", 1)[1])
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": health_port}
    assert container["livenessProbe"]["httpGet"]["port"] == health_port
    assert ds["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(health_port)
    assert pod["hostNetwork"] is True
    assert pod["terminationGracePeriodSeconds"] * 1000 > p2p["drain_timeout_ms"]
    assert "/api/v1/p2p/drain" in " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["snapshotter-root"]["mountPropagation"] == "Bidirectional"
    secret_dir = mounts["secret"]["mountPath"]
    assert p2p["secret_file"].startswith(secret_dir + "/")


def test_systemd_unit_verifies():
    """systemd-analyze verify on the unit, with ExecStart pointing at the
    nydusd under test (verify wants the binary to exist), and the unit's
    argv is one this nydusd accepts with the unit's p2p.json."""
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        pytest.fail("systemd-analyze not found (Debian package systemd)")
    unit = (DEPLOY / "systemd" / "nydusd.service").read_text()
    work = pathlib.Path(tempfile.mkdtemp(prefix="nydus-test-unit-"))
    try:
        (work / "nydusd.service").write_text(unit.replace("/usr/local/bin/nydusd", str(ph.NYDUSD)))
        done = subprocess.run([analyze, "verify", str(work / "nydusd.service")], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        # The config the unit names parses (the daemon refuses bad files at start).
        argv = re.search(r"^ExecStart=(.*)$", unit, re.M).group(1).split()
        assert argv[:2] == ["/usr/local/bin/nydusd", "fuse"] and "--p2p-config" in argv, argv
        p2p = json.loads((DEPLOY / "systemd" / "p2p.json").read_text())["p2p"]
        assert p2p["listen"] in p2p["peers"] and p2p["secret_file"], p2p
    finally:
        shutil.rmtree(work, ignore_errors=True)


def deployment_p2p(cluster, node):
    """The ConfigMap's p2p object with what differs on this machine filled
    in: the headless Service's name (dnsmasq answers NODES_NAME here), the
    secret file, the piece store's directory."""
    p2p = json.loads((KUBE / "p2p.json").read_text())["p2p"]
    p2p.update(peers_dns=f"{ph.NODES_NAME}:{ph.PEER_PORT}", secret_file=str(cluster.secret_path),
               store_dir=str(node.store_dir))
    return p2p


def snapshotter_instance_config(cluster, node):
    """The ConfigMap's nydusd config as nydus-snapshotter fills it in for
    an image (nydusd-contract.md §4.3): the registry host and repository,
    the cache under its root."""
    config = json.loads((KUBE / "nydusd-config.fusedev.json").read_text())
    backend = config["device"]["backend"]["config"]
    backend.update(host=cluster.registry_host, repo=cluster.repo, scheme="http")
    config["device"]["cache"]["config"]["work_dir"] = str(node.cache_dir)
    return config


def test_daemonset_nodes_scale_down_and_up_under_load():
    ph.require_cluster_tools(dns=True)
    # Reads long enough (the registry link at 25 Mbit/s: ~6 s for the
    # image) for both membership changes to land within them.
    with ph.Cluster(nodes=5, peers="dns", rate="25mbit") as c:
        nodes = c.nodes
        for node in nodes:
            node.p2p_override = deployment_p2p(c, node)
        dns = c.dns(nodes[:4])
        for node in nodes[:4]:
            node.start(shared=True, snapshotter_argv=True)
        for node in nodes[:4]:
            node.mount_instance("img", config=snapshotter_instance_config(c, node))
            r = subprocess.run(["ip", "netns", "exec", node.ns, "curl", "-sS", "-o", "/dev/null", "-w",
                                "%{http_code}", "http://127.0.0.1:40901/ready"], capture_output=True, text=True)
            assert r.stdout == "200", (node.index, r)
        # Every node has seen the four members before the load starts.
        time.sleep(0.5)
        readers, leaving, joining = nodes[:3], nodes[3], nodes[4]
        pool = concurrent.futures.ThreadPoolExecutor(4)
        futures = [pool.submit(n.read_all, False, None, None, "img") for n in readers]
        time.sleep(2)
        # Scale down: the pod is deleted; Kubernetes drops it from the
        # Service's endpoints and sends SIGTERM (the daemon drains).
        assert not any(f.done() for f in futures), "the reads ended before the scale-down: no load"
        dns.set(nodes[:3])
        leaving.proc.send_signal(signal.SIGTERM)
        time.sleep(2)
        # Scale up: a new pod starts, turns ready and appears in DNS.
        joining.start(shared=True, snapshotter_argv=True)
        joining.mount_instance("img", config=snapshotter_instance_config(c, joining))
        dns.set(readers + [joining])
        still_reading = sum(not f.done() for f in futures)
        futures.append(pool.submit(joining.read_all, False, None, None, "img"))
        reports = [f.result() for f in futures]
        pool.shutdown()
        bad = [r for r in reports if not r.ok]
        assert not bad, "\n".join(r.summary() for r in bad)
        rc = leaving.proc.wait(timeout=30)
        assert rc == 0, leaving.log()[-2000:]
        assert any("drained in" in line or "still in flight" in line for line in leaving.p2p_log_lines())
        # Origin bytes: what the departed node had fetched left with its
        # piece store, so its units are fetched again by their new owners;
        # everything else stays within the fault factor of the P2P tests.
        got = c.origin_bytes()
        by_client = c.origin_bytes_by_client(settle=False)
        lost = by_client.get(leaving.ip, 0)
        print(f"{still_reading} of 3 readers still reading at the scale-up; origin {got} bytes = {got / c.unique_bytes:.3f}x unique {c.unique_bytes}; the departed node had "
              f"fetched {lost} ({lost / c.unique_bytes:.3f}x); by client {by_client}")
        if got - lost > 1.10 * c.unique_bytes:
            for n in nodes:
                print(f"--- node {n.index}\n" + "\n".join(n.p2p_log_lines()[:40]))
        assert got - lost <= 1.10 * c.unique_bytes, (got, lost, c.unique_bytes, by_client)


# ---------------------------------------------------------------------------
# A real container from a lazy mount

def test_podman_runs_python_from_lazy_mounts_on_two_nodes():
    """Issue 14: a real container from a lazy mount. A python3 root
    filesystem built into a nydus image and pushed to the registry; on node
    A podman starts `python3 -V` from A's mount (nydusd on the registry
    backend, P2P on); then on node B, with B's registry route removed, the
    same: B's data comes from A and the nodes' piece stores, the registry
    serves nothing more."""
    if not shutil.which("podman"):
        pytest.fail("podman not found (Debian package podman; test/install-deps.sh)")
    work = pathlib.Path(tempfile.mkdtemp(prefix="nydus-test-pyroot-"))
    try:
        tree = pm.build_python_rootfs(work / "tree")
        (work / "image").mkdir()
        image = ph.build_image(tree, work / "image")
        with ph.Cluster(nodes=2, image=image, repo="p2p/python") as c:
            a, b = c.start_nodes()
            version = subprocess.run([str(tree / "usr" / "bin" / "python3"), "-V"], capture_output=True,
                                     text=True).stdout.strip()
            out, seconds_a = pm.python_version_in(a)
            assert out == version, (out, version)
            after_a = c.origin_bytes()
            b.cut_registry()
            out, seconds_b = pm.python_version_in(b)
            assert out == version, (out, version)
            assert c.origin_bytes() == after_a
            sources = b.metrics()["sources"]
            from_peers = sum(v.get("bytes", 0) for k, v in sources.items() if k.startswith("peer "))
            print(f"python3 -V in podman: node A {seconds_a:.2f} s (origin {after_a} bytes of the image's "
                  f"{image.unique_bytes}), node B {seconds_b:.2f} s with its registry cut ({from_peers} bytes "
                  f"from peers; sources {sources})")
            assert from_peers + sum(v.get("bytes", 0) for k, v in sources.items() if k == "p2p store") > 0
    finally:
        shutil.rmtree(work, ignore_errors=True)
