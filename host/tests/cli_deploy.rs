//! `sandgraph deploy netpol` as an operator runs it: the policy for the repository's own tools
//! on stdout, files with --out/--fqdn-out, and an error naming the rule a cluster cannot hold.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn sandgraph(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sandgraph"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run sandgraph")
}

fn tools_dir() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tools")
        .display()
        .to_string()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "sandgraph-cli-deploy-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn netpol_for_the_repository_tools_allows_public_https_only() {
    let o = sandgraph(&["deploy", "netpol", "--tools", &tools_dir()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let out = String::from_utf8(o.stdout).unwrap();
    let doc: serde_json::Value = serde_norway::from_str(&out).unwrap();
    assert_eq!(doc["kind"], "NetworkPolicy");
    let egress = doc["spec"]["egress"].as_array().unwrap();
    // http-get's `*` rule, as IPv4 and IPv6 public space on 443; its 127.0.0.1 rule left out.
    assert_eq!(egress.len(), 2, "{out}");
    assert_eq!(egress[0]["to"][0]["ipBlock"]["cidr"], "0.0.0.0/0");
    assert_eq!(egress[0]["ports"][0]["port"], 443);
    assert!(
        out.contains("# left out http-get spec.egress[1] http://127.0.0.1:8000"),
        "{out}"
    );
}

#[test]
fn netpol_writes_both_files_and_names_host_rules_it_needs_a_file_for() {
    let dir = scratch("files");
    let tool = dir.join("tools/api");
    std::fs::create_dir_all(&tool).unwrap();
    std::fs::write(
        tool.join("api.sandgraph.yaml"),
        "apiVersion: sandgraph.dev/v1\nkind: ToolManifest\nmetadata: { name: api }\nspec:\n  egress:\n    - { scheme: https, host: api.example.com }\n    - { scheme: https, host: 1.1.1.1 }\n",
    )
    .unwrap();
    let tools = dir.join("tools").display().to_string();
    let np = dir.join("np.yaml").display().to_string();
    let fq = dir.join("fqdn.yaml").display().to_string();
    let o = sandgraph(&["deploy", "netpol", "--tools", &tools, "--out", &np]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr).trim(),
        "error: the tools need host-name egress (api.example.com:443) but only --out was given; add --fqdn-out FILE for the Cilium policy"
    );
    let o = sandgraph(&[
        "deploy",
        "netpol",
        "--tools",
        &tools,
        "--out",
        &np,
        "--fqdn-out",
        &fq,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let np: serde_json::Value =
        serde_norway::from_str(&std::fs::read_to_string(&np).unwrap()).unwrap();
    assert_eq!(
        np["spec"]["egress"][0]["to"][0]["ipBlock"]["cidr"],
        "1.1.1.1/32"
    );
    let fq: serde_json::Value =
        serde_norway::from_str(&std::fs::read_to_string(&fq).unwrap()).unwrap();
    assert_eq!(fq["kind"], "CiliumNetworkPolicy");
    assert_eq!(
        fq["spec"]["egress"][1]["toFQDNs"][0]["matchName"],
        "api.example.com"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn netpol_names_the_rule_no_cluster_policy_can_express() {
    let o = sandgraph(&[
        "deploy",
        "netpol",
        "--tools",
        &tools_dir(),
        "--allow-private",
        "127.0.0.1",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("http-get/http-get.sandgraph.yaml: spec.egress[1] (tool `http-get`, http://127.0.0.1:8000): 127.0.0.1 is loopback: traffic to it never leaves the pod"),
        "{err}"
    );
}

#[test]
fn netpol_refuses_a_directory_without_manifests_and_a_broken_manifest() {
    let dir = scratch("bad");
    let o = sandgraph(&["deploy", "netpol", "--tools", &dir.display().to_string()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("no tool manifests (<tool>/<tool>.sandgraph.yaml) found")
    );
    std::fs::create_dir_all(dir.join("x")).unwrap();
    std::fs::write(
        dir.join("x/x.sandgraph.yaml"),
        "apiVersion: sandgraph.dev/v1\nkind: ToolManifest\nmetadata: { name: x }\nspec:\n  egress:\n    - { scheme: ftp, host: a.example }\n",
    )
    .unwrap();
    let o = sandgraph(&["deploy", "netpol", "--tools", &dir.display().to_string()]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("x/x.sandgraph.yaml:6:") && err.contains("ftp"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
