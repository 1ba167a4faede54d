//! `sandgraph deploy netpol`: the cluster's copy of the tools' egress allow-list. Every tool
//! manifest's egress rule becomes a NetworkPolicy rule (IP targets) or a Cilium `toFQDNs` rule
//! (host-name targets), so the network refuses what the in-process sandbox refuses.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::sandbox::egress::address::non_public_reason;
use crate::sandbox::manifest::Manifest;

#[derive(Debug, Subcommand)]
pub enum DeployCommand {
    /// Generate the host pods' tool egress policy from the tool manifests: IP/CIDR rules as a
    /// Kubernetes NetworkPolicy, host-name rules as a Cilium toFQDNs policy.
    Netpol(NetpolArgs),
}

#[derive(Debug, Args)]
pub struct NetpolArgs {
    /// Directory of tools, each `<tool>/<tool>.sandgraph.yaml`.
    #[arg(long)]
    pub tools: PathBuf,
    /// A non-public address the host is allowed to reach (as `SANDGRAPH_ALLOW_PRIVATE`);
    /// rules naming other non-public addresses are left out, as the sandbox refuses them.
    #[arg(long = "allow-private", value_name = "IP")]
    pub allow_private: Vec<IpAddr>,
    /// Label selecting the host pods, `key=value`.
    #[arg(long, default_value = "app.kubernetes.io/name=sandgraph-host")]
    pub selector: String,
    /// Write the NetworkPolicy here instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Write the Cilium toFQDNs policy here (with --out; without --out it goes to stdout too).
    #[arg(long, value_name = "FILE", requires = "out")]
    pub fqdn_out: Option<PathBuf>,
}

/// Why a rule cannot be turned into a cluster policy.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetpolError {
    #[error(
        "{file}: spec.egress[{index}] (tool `{tool}`, {scheme}://{host}:{port}): {why}; the in-process sandbox can reach it, a cluster policy cannot allow it"
    )]
    Inexpressible {
        file: String,
        tool: String,
        index: usize,
        scheme: &'static str,
        host: String,
        port: u16,
        why: String,
    },
    #[error("--selector `{0}` is not `key=value`")]
    Selector(String),
    #[error("{0}")]
    Load(String),
    #[error(
        "the tools need host-name egress ({0}) but only --out was given; add --fqdn-out FILE for the Cilium policy"
    )]
    FqdnOutMissing(String),
    #[error("{path}: cannot write: {message}")]
    Write { path: String, message: String },
}

/// Every IPv4 range the sandbox refuses as non-public (sandbox/egress/address.rs), so `*` ("any
/// public host") becomes 0.0.0.0/0 less these.
const NON_PUBLIC_V4: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
];
/// The IPv6 ranges that are never public or that carry (possibly non-public) IPv4 addresses
/// the sandbox judges one by one; the cluster cannot, so it refuses the whole form.
const NON_PUBLIC_V6: &[&str] = &[
    "::/8",
    "64:ff9b::/96",
    "64:ff9b:1::/48",
    "2001::/32",
    "2001:db8::/32",
    "2002::/16",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
];

/// What the generator produced: the two policies as YAML, and what it left out and why.
#[derive(Debug, PartialEq)]
pub struct Generated {
    pub network_policy: String,
    /// `None` when no rule names a host.
    pub fqdn_policy: Option<String>,
    pub fqdn_hosts: Vec<String>,
}

#[derive(Default)]
struct Collected {
    /// (ipBlock, port) pairs; the ipBlock as JSON text so it can sit in a set.
    ip: BTreeSet<(String, u16)>,
    /// port -> host names (exact) and patterns (`*.x`).
    fqdn: BTreeMap<u16, BTreeSet<(bool, String)>>,
    notes: Vec<String>,
}

pub fn run(cmd: DeployCommand) -> Result<String, String> {
    match cmd {
        DeployCommand::Netpol(args) => netpol(&args).map_err(|e| e.to_string()),
    }
}

fn netpol(args: &NetpolArgs) -> Result<String, NetpolError> {
    let manifests = load(&args.tools)?;
    let g = generate(&manifests, &args.allow_private, &args.selector)?;
    let Some(out) = &args.out else {
        let mut all = g.network_policy;
        if let Some(f) = g.fqdn_policy {
            all.push_str("---\n");
            all.push_str(&f);
        }
        return Ok(all.trim_end().to_owned());
    };
    let write = |path: &Path, text: &str| {
        std::fs::write(path, text).map_err(|e| NetpolError::Write {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    };
    write(out, &g.network_policy)?;
    let mut summary = format!("wrote {}", out.display());
    match (&args.fqdn_out, &g.fqdn_policy) {
        (Some(path), policy) => {
            // An empty document list still builds with kustomize, so the overlay can always
            // name the file.
            let text = policy.clone().unwrap_or_else(|| {
                format!("{HEADER}# No tool names a host: no FQDN egress is allowed.\n")
            });
            write(path, &text)?;
            let _ = write!(summary, "\nwrote {}", path.display());
        }
        (None, Some(_)) => return Err(NetpolError::FqdnOutMissing(g.fqdn_hosts.join(", "))),
        (None, None) => {}
    }
    Ok(summary)
}

/// The manifests as (file name, manifest), sorted by tool name.
fn load(dir: &Path) -> Result<Vec<(String, Manifest)>, NetpolError> {
    if !dir.is_dir() {
        return Err(NetpolError::Load(format!(
            "{}: not a directory of tools (expected <tool>/<tool>.sandgraph.yaml inside)",
            dir.display()
        )));
    }
    let mut files = Vec::new();
    let entries = std::fs::read_dir(dir)
        .map_err(|e| NetpolError::Load(format!("{}: cannot list: {e}", dir.display())))?;
    for entry in entries {
        let sub = entry
            .map_err(|e| NetpolError::Load(format!("{}: {e}", dir.display())))?
            .path();
        let Ok(inner) = std::fs::read_dir(&sub) else {
            continue;
        };
        for file in inner {
            let p = file
                .map_err(|e| NetpolError::Load(format!("{}: {e}", sub.display())))?
                .path();
            if p.to_string_lossy().ends_with(".sandgraph.yaml") {
                files.push(p);
            }
        }
    }
    if files.is_empty() {
        return Err(NetpolError::Load(format!(
            "{}: no tool manifests (<tool>/<tool>.sandgraph.yaml) found",
            dir.display()
        )));
    }
    files.sort();
    let mut out = Vec::new();
    for p in files {
        let m = Manifest::from_file(&p).map_err(|e| NetpolError::Load(e.to_string()))?;
        out.push((p.display().to_string(), m));
    }
    out.sort_by(|a, b| a.1.metadata.name.cmp(&b.1.metadata.name));
    Ok(out)
}

const HEADER: &str = "# Generated by `sandgraph deploy netpol` from the tool manifests; do not edit.\n\
# Regenerate: sandgraph deploy netpol --tools tools --out deploy/k8s/base/generated/tool-egress.networkpolicy.yaml \\\n\
#   --fqdn-out deploy/k8s/components/fqdn-egress/tool-egress.cilium-fqdn.yaml\n";

/// Turns the manifests' egress rules into the two policies.
pub fn generate(
    manifests: &[(String, Manifest)],
    allow_private: &[IpAddr],
    selector: &str,
) -> Result<Generated, NetpolError> {
    let (key, value) = selector
        .split_once('=')
        .filter(|(k, v)| !k.is_empty() && !v.is_empty())
        .ok_or_else(|| NetpolError::Selector(selector.to_owned()))?;
    let mut c = Collected::default();
    for (file, m) in manifests {
        for (index, rule) in m.spec.egress.iter().enumerate() {
            let port = rule.port.unwrap_or(rule.scheme.default_port());
            let at = format!(
                "{} spec.egress[{index}] {}://{}:{port}",
                m.metadata.name,
                rule.scheme.as_str(),
                rule.host
            );
            let inexpressible = |why: String| NetpolError::Inexpressible {
                file: file.clone(),
                tool: m.metadata.name.clone(),
                index,
                scheme: rule.scheme.as_str(),
                host: rule.host.clone(),
                port,
                why,
            };
            if rule.host == "*" {
                // "Any public host": the whole address space less what the sandbox refuses.
                c.ip.insert((
                    json!({"cidr": "0.0.0.0/0", "except": NON_PUBLIC_V4}).to_string(),
                    port,
                ));
                c.ip.insert((
                    json!({"cidr": "::/0", "except": NON_PUBLIC_V6}).to_string(),
                    port,
                ));
            } else if let Ok(ip) = rule.host.parse::<IpAddr>() {
                match non_public_reason(ip) {
                    None => {
                        c.ip.insert((json!({"cidr": host_cidr(ip)}).to_string(), port));
                    }
                    Some(reason) if allow_private.contains(&ip) => {
                        if ip.is_loopback() || ip.is_unspecified() {
                            return Err(inexpressible(format!(
                                "{ip} is {reason}: traffic to it never leaves the pod, so no NetworkPolicy governs it; drop --allow-private {ip} or the rule"
                            )));
                        }
                        c.ip.insert((json!({"cidr": host_cidr(ip)}).to_string(), port));
                    }
                    Some(reason) => c.notes.push(format!(
                        "left out {at}: {ip} is {reason}, refused by the sandbox unless allowed with --allow-private"
                    )),
                }
            } else {
                // A host name or `*.domain`: only a DNS-aware policy can hold it.
                let pattern = rule.host.starts_with("*.");
                c.fqdn
                    .entry(port)
                    .or_default()
                    .insert((pattern, rule.host.to_ascii_lowercase()));
            }
        }
    }
    let mut header = HEADER.to_owned();
    for n in &c.notes {
        let _ = writeln!(header, "# {n}");
    }
    let egress: Vec<Value> =
        c.ip.iter()
            .map(|(block, port)| {
                let block: Value = serde_json::from_str(block).expect("built from json! above");
                json!({"to": [{"ipBlock": block}], "ports": [{"protocol": "TCP", "port": port}]})
            })
            .collect();
    let network_policy = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "tool-egress"},
        "spec": {
            "podSelector": {"matchLabels": {key: value}},
            "policyTypes": ["Egress"],
            "egress": egress,
        },
    });
    let network_policy = format!("{header}{}", yaml(&network_policy));
    let fqdn_hosts: Vec<String> = c
        .fqdn
        .iter()
        .flat_map(|(port, hosts)| hosts.iter().map(move |(_, h)| format!("{h}:{port}")))
        .collect();
    let fqdn_policy = (!c.fqdn.is_empty()).then(|| {
        let mut egress = vec![json!({
            // Cilium learns names from DNS answers it proxies: DNS must go through it.
            "toEndpoints": [{"matchLabels": {
                "k8s:io.kubernetes.pod.namespace": "kube-system",
                "k8s:k8s-app": "kube-dns",
            }}],
            "toPorts": [{
                "ports": [{"port": "53", "protocol": "ANY"}],
                "rules": {"dns": [{"matchPattern": "*"}]},
            }],
        })];
        for (port, hosts) in &c.fqdn {
            let selectors: Vec<Value> = hosts
                .iter()
                .map(|(pattern, h)| {
                    if *pattern {
                        json!({"matchPattern": h})
                    } else {
                        json!({"matchName": h})
                    }
                })
                .collect();
            egress.push(json!({
                "toFQDNs": selectors,
                "toPorts": [{"ports": [{"port": port.to_string(), "protocol": "TCP"}]}],
            }));
        }
        let policy = json!({
            "apiVersion": "cilium.io/v2",
            "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "tool-egress-fqdn"},
            "spec": {
                "endpointSelector": {"matchLabels": {key: value}},
                "egress": egress,
            },
        });
        format!(
            "{HEADER}# Cilium's `*.domain` matches one label (a.domain, not a.b.domain), narrower than the\n\
             # sandbox's any-depth match: the cluster may refuse a deeper name, never allow more.\n{}",
            yaml(&policy)
        )
    });
    Ok(Generated {
        network_policy,
        fqdn_policy,
        fqdn_hosts,
    })
}

fn host_cidr(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}/32"),
        IpAddr::V6(v6) => format!("{v6}/128"),
    }
}

fn yaml(v: &Value) -> String {
    serde_norway::to_string(v).expect("a JSON value is always representable as YAML")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(name: &str, egress: &str) -> (String, Manifest) {
        let text = format!(
            "apiVersion: sandgraph.dev/v1\nkind: ToolManifest\nmetadata: {{ name: {name} }}\nspec:\n  egress:\n{egress}"
        );
        let file = format!("tools/{name}/{name}.sandgraph.yaml");
        (file.clone(), Manifest::parse(&file, &text).unwrap())
    }

    const SEL: &str = "app.kubernetes.io/name=sandgraph-host";

    fn policy(g: &Generated) -> Value {
        serde_norway::from_str(&g.network_policy).unwrap()
    }

    #[test]
    fn public_addresses_become_host_cidrs_on_the_rule_port() {
        let m = manifest(
            "t",
            "    - { scheme: https, host: 93.184.216.34 }\n    - { scheme: http, host: \"2606:4700::1111\", port: 8080 }\n",
        );
        let g = generate(&[m], &[], SEL).unwrap();
        let p = policy(&g);
        assert_eq!(p["kind"], "NetworkPolicy");
        assert_eq!(
            p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
            "sandgraph-host"
        );
        let egress = p["spec"]["egress"].as_array().unwrap();
        assert_eq!(egress.len(), 2);
        assert!(egress.contains(&json!({
            "to": [{"ipBlock": {"cidr": "93.184.216.34/32"}}],
            "ports": [{"protocol": "TCP", "port": 443}],
        })));
        assert!(egress.contains(&json!({
            "to": [{"ipBlock": {"cidr": "2606:4700::1111/128"}}],
            "ports": [{"protocol": "TCP", "port": 8080}],
        })));
        assert!(g.fqdn_policy.is_none());
    }

    #[test]
    fn any_public_host_excludes_every_range_the_sandbox_refuses() {
        let g = generate(
            &[manifest("t", "    - { scheme: https, host: \"*\" }\n")],
            &[],
            SEL,
        )
        .unwrap();
        let p = policy(&g);
        let v4 = &p["spec"]["egress"][0]["to"][0]["ipBlock"];
        assert_eq!(v4["cidr"], "0.0.0.0/0");
        let except: Vec<&str> = v4["except"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        // Each excepted range's first address is non-public to the sandbox too, and the
        // sandbox's classes are all covered.
        for probe in [
            "10.1.2.3",
            "127.0.0.1",
            "169.254.169.254",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
        ] {
            let ip: std::net::Ipv4Addr = probe.parse().unwrap();
            assert!(
                except.iter().any(|c| in_v4(ip, c)),
                "{probe} is not excepted"
            );
        }
        for c in &except {
            let first: std::net::Ipv4Addr = c.split('/').next().unwrap().parse().unwrap();
            assert!(non_public_reason(first.into()).is_some(), "{c} is public");
        }
        assert_eq!(p["spec"]["egress"][1]["to"][0]["ipBlock"]["cidr"], "::/0");
    }

    fn in_v4(ip: std::net::Ipv4Addr, cidr: &str) -> bool {
        let (net, len) = cidr.split_once('/').unwrap();
        let net: std::net::Ipv4Addr = net.parse().unwrap();
        let len: u32 = len.parse().unwrap();
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        u32::from(ip) & mask == u32::from(net) & mask
    }

    #[test]
    fn private_addresses_are_left_out_unless_allowed_and_loopback_is_refused_with_the_rule() {
        let m = manifest(
            "db",
            "    - { scheme: http, host: 10.0.0.5, port: 9200 }\n    - { scheme: http, host: 127.0.0.1, port: 8000 }\n",
        );
        let g = generate(std::slice::from_ref(&m), &[], SEL).unwrap();
        assert_eq!(policy(&g)["spec"]["egress"], json!([]));
        assert!(
            g.network_policy
                .contains("# left out db spec.egress[0] http://10.0.0.5:9200: 10.0.0.5 is private"),
            "{}",
            g.network_policy
        );
        let g = generate(
            std::slice::from_ref(&m),
            &["10.0.0.5".parse().unwrap()],
            SEL,
        )
        .unwrap();
        assert_eq!(
            policy(&g)["spec"]["egress"][0]["to"][0]["ipBlock"]["cidr"],
            "10.0.0.5/32"
        );
        let e = generate(&[m], &["127.0.0.1".parse().unwrap()], SEL).unwrap_err();
        assert_eq!(
            e.to_string(),
            "tools/db/db.sandgraph.yaml: spec.egress[1] (tool `db`, http://127.0.0.1:8000): 127.0.0.1 is loopback: traffic to it never leaves the pod, so no NetworkPolicy governs it; drop --allow-private 127.0.0.1 or the rule; the in-process sandbox can reach it, a cluster policy cannot allow it"
        );
    }

    #[test]
    fn host_names_become_a_cilium_fqdn_policy_grouped_by_port() {
        let m = manifest(
            "api",
            "    - { scheme: https, host: API.example.com }\n    - { scheme: https, host: \"*.github.io\" }\n    - { scheme: http, host: mirror.example.org, port: 8080 }\n",
        );
        let g = generate(&[m], &[], SEL).unwrap();
        assert_eq!(policy(&g)["spec"]["egress"], json!([]));
        assert_eq!(
            g.fqdn_hosts,
            // exact names first, then patterns, per port
            [
                "api.example.com:443",
                "*.github.io:443",
                "mirror.example.org:8080"
            ]
        );
        let f: Value = serde_norway::from_str(g.fqdn_policy.as_deref().unwrap()).unwrap();
        assert_eq!(f["kind"], "CiliumNetworkPolicy");
        let egress = f["spec"]["egress"].as_array().unwrap();
        assert_eq!(
            egress[0]["toPorts"][0]["rules"]["dns"][0]["matchPattern"],
            "*"
        );
        assert_eq!(
            egress[1],
            json!({
                "toFQDNs": [{"matchName": "api.example.com"}, {"matchPattern": "*.github.io"}],
                "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}],
            })
        );
        assert_eq!(
            egress[2]["toFQDNs"],
            json!([{"matchName": "mirror.example.org"}])
        );
        assert_eq!(egress[2]["toPorts"][0]["ports"][0]["port"], "8080");
    }

    #[test]
    fn a_selector_without_a_value_is_refused() {
        let e = generate(&[], &[], "app").unwrap_err();
        assert_eq!(e.to_string(), "--selector `app` is not `key=value`");
    }
}
