"""A CycloneDX 1.5 SBOM of one image's root filesystem (deploy/docker/build.sh writes it beside
the image as target/docker/<kind>.cdx.json).

Three kinds of component, each from its source of truth: the Rust crates linked into the
binary (cargo metadata's resolved graph from the binary's package, normal dependencies only,
for this platform), the Debian packages that own each shared library copied into the image
(dpkg), and the WebAssembly components the host image carries (by sha256).

usage: python3 sbom.py KIND ROOTFS PACKAGE OUT
"""

import hashlib
import json
import os
import subprocess
import sys
import uuid


def crates(package):
    meta = json.loads(
        subprocess.check_output(
            ["cargo", "metadata", "--format-version", "1", "--locked",
             "--filter-platform", "x86_64-unknown-linux-gnu"],
            stderr=subprocess.DEVNULL,
        )
    )
    by_id = {p["id"]: p for p in meta["packages"]}
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    root = next(p["id"] for p in meta["packages"] if p["name"] == package and p["source"] is None)
    seen, todo = set(), [root]
    while todo:
        i = todo.pop()
        if i in seen:
            continue
        seen.add(i)
        for d in nodes[i]["deps"]:
            if any(k["kind"] is None for k in d["dep_kinds"]):
                todo.append(d["pkg"])
    out = []
    for i in sorted(seen):
        p = by_id[i]
        c = {"type": "library" if i != root else "application", "name": p["name"],
             "version": p["version"], "purl": f"pkg:cargo/{p['name']}@{p['version']}"}
        if p.get("license"):
            c["licenses"] = [{"expression": p["license"]}]
        out.append(c)
    return out


def debs(rootfs):
    owners = {}
    for dirpath, _, files in os.walk(rootfs):
        for f in files:
            path = "/" + os.path.relpath(os.path.join(dirpath, f), rootfs)
            if not (".so" in f or path.startswith("/lib64/") or path.endswith(".json") and "vulkan" in path or path.startswith("/etc/ssl/")):
                continue
            for candidate in (path, "/usr" + path if not path.startswith("/usr/") else path[4:]):
                r = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True)
                if r.returncode == 0:
                    owners.setdefault(r.stdout.split(":", 1)[0].strip(), set()).add(path)
                    break
    out = []
    for pkg in sorted(owners):
        name = pkg.split(":")[0]
        version = subprocess.check_output(["dpkg-query", "-W", "-f=${Version}", pkg], text=True)
        out.append({"type": "library", "name": name, "version": version,
                    "purl": f"pkg:deb/debian/{name}@{version}?arch=amd64",
                    "properties": [{"name": "sandgraph:files", "value": " ".join(sorted(owners[pkg]))}]})
    return out


def wasm(rootfs):
    d = os.path.join(rootfs, "opt/sandgraph/components")
    out = []
    for f in sorted(os.listdir(d)) if os.path.isdir(d) else []:
        digest = hashlib.sha256(open(os.path.join(d, f), "rb").read()).hexdigest()
        out.append({"type": "file", "name": f"/opt/sandgraph/components/{f}",
                    "hashes": [{"alg": "SHA-256", "content": digest}]})
    return out


def main():
    kind, rootfs, package, out = sys.argv[1:5]
    components = crates(package) + debs(rootfs) + wasm(rootfs)
    doc = {
        "bomFormat": "CycloneDX", "specVersion": "1.5", "version": 1,
        "serialNumber": f"urn:uuid:{uuid.uuid4()}",
        "metadata": {"component": {"type": "container", "name": f"sandgraph/{kind}"}},
        "components": components,
    }
    with open(out, "w") as f:
        json.dump(doc, f, indent=1)
    print(f"{out}: {len(components)} components")


if __name__ == "__main__":
    main()
