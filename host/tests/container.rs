//! The two images as real, locked-down containers: built by deploy/docker/build.sh from this
//! test build's binaries and components, run with the pod's securityContext translated to
//! Docker (read-only root, numeric user, every capability dropped, no-new-privileges, tmpfs
//! /tmp, a volume for the journal, memory and CPU limits) on a Docker network of their own.
//! The host turns ready only once the inference server answers; the main job (an agent graph)
//! is submitted over HTTP and answered; `docker stop` drains and exits 0; `docker kill` in the
//! middle of a run, then `docker start`, resumes that run to its end; a write outside the
//! volumes fails. Skipped, saying so, only where no Docker engine answers.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const TOKEN: &str = "test-only-admin-token-0001";
const TAG: &str = "container-test";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("run docker")
}

fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Containers, network and volume of one test, removed however it ends.
struct Scene {
    name: String,
    models: tempfile::TempDir,
}

impl Scene {
    fn new() -> Scene {
        let name = format!("sandgraph-test-{}", std::process::id());
        docker_ok(&["network", "create", &name]);
        docker_ok(&["volume", "create", &format!("{name}-journal")]);
        let models = tempfile::tempdir().unwrap();
        std::fs::write(
            models.path().join("models.yaml"),
            format!(
                "models:\n  default: {{ provider: openai, endpoint: 'http://{name}-infer:8000/v1', model: smollm2, timeout: {{ connect: 2s, read: 120s }} }}\n"
            ),
        )
        .unwrap();
        // The container's user reads it.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(models.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(
            models.path().join("models.yaml"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        Scene { name, models }
    }
    fn host(&self) -> String {
        format!("{}-host", self.name)
    }
    fn infer(&self) -> String {
        format!("{}-infer", self.name)
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.host(), &self.infer()]);
        let _ = docker(&["network", "rm", &self.name]);
        let _ = docker(&["volume", "rm", &format!("{}-journal", self.name)]);
    }
}

/// The pod's container securityContext and limits, as `docker run` flags.
const LOCKED_DOWN: &[&str] = &[
    "--read-only",
    "--user",
    "10001:10001",
    "--cap-drop",
    "ALL",
    "--security-opt",
    "no-new-privileges",
    "--tmpfs",
    "/tmp:size=64m",
    "--memory",
    "1g",
    "--cpus",
    "2",
];

fn run_host(scene: &Scene, extra: &[&str], args: &[&str]) -> Output {
    let tokens = repo().join("host/tests/fixtures/auth/test-only-tokens.yaml");
    let journal = format!("{}-journal:/var/lib/sandgraph", scene.name);
    let tokens = format!("{}:/etc/sandgraph/auth/tokens.yaml:ro", tokens.display());
    // The models file as the Kubernetes ConfigMap `sandgraph-models` has it, but naming this
    // network's inference container.
    let models = format!("{}:/etc/sandgraph/models:ro", scene.models.path().display());
    let mut cmd: Vec<String> = ["run", "--name", &scene.host(), "--network", &scene.name]
        .iter()
        .map(|s| s.to_string())
        .collect();
    cmd.extend(LOCKED_DOWN.iter().map(|s| s.to_string()));
    for a in [
        "-v",
        &journal,
        "-v",
        &tokens,
        "-v",
        &models,
        "-e",
        "SANDGRAPH_MODELS=/etc/sandgraph/models/models.yaml",
        "-e",
        "SANDGRAPH_AUTH_TOKENS=/etc/sandgraph/auth/tokens.yaml",
        "-e",
        &format!("SANDGRAPH_MODEL_URL=http://{}:8000", scene.infer()),
        "-e",
        "SANDGRAPH_SHUTDOWN_GRACE=20s",
        "-p",
        "127.0.0.1::8080",
    ] {
        cmd.push(a.to_string());
    }
    cmd.extend(extra.iter().map(|s| s.to_string()));
    cmd.push(format!("sandgraph/host:{TAG}"));
    cmd.extend(args.iter().map(|s| s.to_string()));
    Command::new("docker").args(&cmd).output().unwrap()
}

/// `GET`/`POST` against the host's published port; (status, JSON body or null).
fn http(port: u16, method: &str, path: &str, body: Option<(&str, &str)>) -> (u16, Value) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, Value::Null);
    };
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let (ctype, data) = body.unwrap_or(("application/json", ""));
    let _ = write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{data}",
        data.len()
    );
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn published_port(container: &str) -> u16 {
    let out = docker_ok(&["port", container, "8080"]);
    out.lines()
        .next()
        .and_then(|l| l.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no published port: {out}"))
}

fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn build_images() {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_sandgraph"));
    let infer = common::infer_binary();
    let components = Path::new(sandgraph_test_artifacts::TOOLS[0].1)
        .parent()
        .unwrap()
        .to_path_buf();
    // Tests of this file run side by side, each in its own process: the first builds the
    // images, the others wait for it and use them (rebuilt only when the binaries changed).
    let target = bin.parent().unwrap().parent().unwrap();
    let lock = std::fs::File::create(target.join("docker.lock")).unwrap();
    // SAFETY: flock(2) on a descriptor this function owns; released when `lock` is dropped.
    assert_eq!(
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) },
        0
    );
    let mut inputs = vec![bin.clone(), infer.clone()];
    inputs.extend(
        sandgraph_test_artifacts::TOOLS
            .iter()
            .map(|(_, p)| PathBuf::from(p)),
    );
    let built_from: String = inputs
        .iter()
        .map(|p| {
            format!(
                "{}:{:?}\n",
                p.display(),
                p.metadata().and_then(|m| m.modified()).ok()
            )
        })
        .collect();
    let stamp = target.join("docker/container-test.stamp");
    let images_there = ["host", "inference"].iter().all(|kind| {
        docker(&["image", "inspect", &format!("sandgraph/{kind}:{TAG}")])
            .status
            .success()
    });
    if images_there && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&built_from) {
        return;
    }
    let out = Command::new("bash")
        .arg(repo().join("deploy/docker/build.sh"))
        .arg(TAG)
        .env("SANDGRAPH_BIN", &bin)
        .env("SANDGRAPH_INFER_BIN", &infer)
        .env("SANDGRAPH_COMPONENTS", &components)
        .env("CARGO_TARGET_DIR", target)
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "deploy/docker/build.sh failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&stamp, built_from).unwrap();
}

#[test]
fn the_images_run_locked_down_serve_the_main_job_drain_and_resume() {
    if !docker(&["info"]).status.success() {
        eprintln!("SKIPPED: no Docker engine answers `docker info`; the container test needs one");
        return;
    }
    build_images();
    // Each image's SBOM: the crates linked in, the Debian packages of its libraries, the
    // components it carries.
    let target = PathBuf::from(env!("CARGO_BIN_EXE_sandgraph"))
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("docker");
    for (kind, wants) in [
        (
            "host",
            [
                "wasmtime",
                "libc6",
                "/opt/sandgraph/components/planner.wasm",
            ],
        ),
        ("inference", ["wgpu", "mesa-vulkan-drivers", "libvulkan1"]),
    ] {
        let sbom: Value = serde_json::from_slice(
            &std::fs::read(target.join(format!("{kind}.cdx.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(sbom["bomFormat"], "CycloneDX");
        let names: Vec<&str> = sbom["components"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        for want in wants {
            assert!(names.contains(&want), "{kind}: {want} not in the SBOM");
        }
    }
    let scene = Scene::new();

    // A write outside the volumes fails: the root filesystem is read-only.
    let refused = run_host(
        &scene,
        &["--rm", "-e", "SANDGRAPH_JOURNAL=/opt/sandgraph/journal"],
        &["serve"],
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("/opt/sandgraph/journal") && stderr.contains("Read-only file system"),
        "{stderr}"
    );

    // The host first, the inference server not yet there: alive, not ready.
    let started = run_host(&scene, &["-d"], &["serve"]);
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    let port = published_port(&scene.host());
    wait_until("/healthz", Duration::from_secs(60), || {
        http(port, "GET", "/healthz", None).0 == 200
    });
    let (status, ready) = http(port, "GET", "/readyz", None);
    assert_eq!(status, 503, "{ready}");

    let models = format!("{}:/models:ro", repo().join("models").display());
    let infer_name = scene.infer();
    let mut infer: Vec<&str> = vec!["run", "-d", "--name", &infer_name, "--network", &scene.name];
    infer.extend(LOCKED_DOWN);
    let image = format!("sandgraph/inference:{TAG}");
    infer.extend([
        "-v",
        &models,
        &image,
        "serve",
        "--listen",
        "0.0.0.0:8000",
        "--backend",
        "cpu",
        "--slots",
        "2",
        "--context",
        "2048",
    ]);
    docker_ok(&infer);
    wait_until(
        "/readyz once the model answers",
        Duration::from_secs(120),
        || http(port, "GET", "/readyz", None).0 == 200,
    );
    // Docker's own HEALTHCHECK (the image's `health` subcommand, no shell) agrees.
    wait_until(
        "the inference container's health check",
        Duration::from_secs(90),
        || docker_ok(&["inspect", "-f", "{{.State.Health.Status}}", &scene.infer()]) == "healthy",
    );

    // The main job over HTTP: plan-execute-review, its agents' model calls going to the
    // inference container through the openai provider.
    let graph = std::fs::read_to_string(repo().join("graphs/plan-execute-review.yaml")).unwrap();
    let (status, body) = http(
        port,
        "POST",
        "/v1/graphs",
        Some(("application/yaml", &graph)),
    );
    assert!(status == 201 || status == 200, "{status} {body}");
    let input = json!({"graph": "plan-execute-review", "input": {"goal": "Compute 17*23"}});
    let (status, done) = http(
        port,
        "POST",
        "/v1/runs?wait=true",
        Some(("application/json", &input.to_string())),
    );
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["status"], "succeeded", "{done}");
    let answer = done["output"]["answer"]["matches"][0]["value"]["answer"]
        .as_str()
        .unwrap_or_default();
    assert!(answer.contains("calc 17*23: value 391"), "{done}");

    // Killed in the middle of a run, started again: the run resumes and finishes.
    let (status, started_run) = http(
        port,
        "POST",
        "/v1/runs",
        Some(("application/json", &input.to_string())),
    );
    assert_eq!(status, 202, "{started_run}");
    let run = started_run["run"].as_str().unwrap().to_owned();
    wait_until("the run's first step", Duration::from_secs(60), || {
        let (_, r) = http(port, "GET", &format!("/v1/runs/{run}"), None);
        r["steps"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["status"] == "completed"))
    });
    let (_, before) = http(port, "GET", &format!("/v1/runs/{run}"), None);
    assert_eq!(before["status"], "running", "{before}");
    docker_ok(&["kill", &scene.host()]);
    docker_ok(&["start", &scene.host()]);
    let port = published_port(&scene.host());
    wait_until("the resumed run's end", Duration::from_secs(180), || {
        let (_, r) = http(port, "GET", &format!("/v1/runs/{run}"), None);
        r["status"] == "succeeded"
    });

    // `docker stop` (SIGTERM) drains and exits 0.
    docker_ok(&["stop", "-t", "40", &scene.host()]);
    let code = docker_ok(&["inspect", "-f", "{{.State.ExitCode}}", &scene.host()]);
    assert_eq!(code, "0");
}

/// Replicas of one test, each a container named `<scene>-r<i>` (its host name too, so the
/// owner of a lease names its container), on a Docker network of their own with the test's
/// PostgreSQL and gates on the network's gateway address; removed however the test ends.
struct Replicas {
    network: String,
    names: Vec<String>,
}

impl Drop for Replicas {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = docker(&["rm", "-f", "-v", name]);
        }
        let _ = docker(&["network", "rm", &self.network]);
    }
}

impl Replicas {
    /// Creates the network; returns it with its (gateway, subnet).
    fn network() -> (Replicas, String, String) {
        let network = format!("sandgraph-replicas-{}", std::process::id());
        docker_ok(&["network", "create", &network]);
        let replicas = Replicas {
            network,
            names: Vec::new(),
        };
        let ipam = docker_ok(&[
            "network",
            "inspect",
            "-f",
            "{{range .IPAM.Config}}{{.Gateway}} {{.Subnet}}{{end}}",
            &replicas.network,
        ]);
        let (gateway, subnet) = ipam
            .split_once(' ')
            .expect("the network's gateway and subnet");
        (replicas, gateway.to_owned(), subnet.to_owned())
    }

    /// Starts replica `i` serving the journal at `journal`, with egress to `gateway` allowed.
    fn start(&mut self, journal: &str, gateway: &str) -> String {
        let name = format!("{}-r{}", self.network, self.names.len());
        self.names.push(name.clone());
        let tokens = repo().join("host/tests/fixtures/auth/test-only-tokens.yaml");
        let tokens = format!("{}:/etc/sandgraph/auth/tokens.yaml:ro", tokens.display());
        let journal = format!("SANDGRAPH_JOURNAL={journal}");
        let allow = format!("SANDGRAPH_ALLOW_PRIVATE={gateway}");
        let image = format!("sandgraph/host:{TAG}");
        let mut args = vec![
            "run",
            "-d",
            "--name",
            &name,
            "--hostname",
            &name,
            "--network",
            &self.network,
        ];
        args.extend(LOCKED_DOWN);
        args.extend([
            "-v",
            &tokens,
            "-e",
            "SANDGRAPH_AUTH_TOKENS=/etc/sandgraph/auth/tokens.yaml",
            "-e",
            &journal,
            "-e",
            &allow,
            "-e",
            "SANDGRAPH_RUN_LEASE=2s",
            "-e",
            "SANDGRAPH_RATE_LIMIT=100000",
            "-e",
            "SANDGRAPH_RATE_BURST=100000",
            "-e",
            "RUST_LOG=warn",
            "-p",
            "127.0.0.1::8080",
            &image,
            "serve",
        ]);
        docker_ok(&args);
        name
    }
}

/// The container executing `run` now and its lease epoch, from the shared queue.
fn owner_of(db: &mut postgres::Client, run: &str, names: &[String]) -> Option<(String, i64)> {
    let (owner, epoch) = common::replicas::lease_of(db, run)?;
    let name = names.iter().find(|n| owner.starts_with(&format!("{n}-")))?;
    Some((name.clone(), epoch))
}

#[test]
fn a_replica_container_partitioned_by_docker_network_disconnect_is_taken_over_once() {
    use common::replicas::{ADD, EFFECT_THEN_GATE, Gate, assert_executed_once, event_count};
    if !docker(&["info"]).status.success() {
        eprintln!("SKIPPED: no Docker engine answers `docker info`; the container test needs one");
        return;
    }
    build_images();
    let (mut replicas, gateway, subnet) = Replicas::network();
    // PostgreSQL and the gates on the host, reachable from the containers only through their
    // network: disconnecting a container from it is the partition.
    let pg = common::postgres::Postgres::start_for_network(&gateway, &subnet);
    let url = pg.database("containers");
    let in_network = url.replace("@127.0.0.1:", &format!("@{gateway}:"));
    let ports: Vec<u16> = (0..3)
        .map(|_| {
            let name = replicas.start(&in_network, &gateway);
            published_port(&name)
        })
        .collect();
    for port in &ports {
        wait_until("each replica ready", Duration::from_secs(60), || {
            http(*port, "GET", "/readyz", None).0 == 200
        });
    }
    let ip = gateway.parse().unwrap();
    let (effect, gate) = (Gate::start_on(ip), Gate::start_on(ip));
    effect.open();
    let manifest = common::replicas::gate_fetcher_manifest(&[&effect, &gate]);
    let wasm = std::fs::read(common::hostile("egress_fetch")).unwrap();
    use base64::Engine as _;
    let upload = json!({
        "manifest": manifest,
        "component": base64::engine::general_purpose::STANDARD.encode(wasm),
    });
    let (status, body) = http(
        ports[0],
        "POST",
        "/v1/tools",
        Some(("application/json", &upload.to_string())),
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = http(
        ports[1],
        "POST",
        "/v1/graphs",
        Some(("application/yaml", EFFECT_THEN_GATE)),
    );
    assert_eq!(status, 201, "{body}");
    let input =
        json!({"graph": "effect-then-gate", "input": {"effect": effect.url(), "url": gate.url()}});
    let (status, body) = http(
        ports[2],
        "POST",
        "/v1/runs",
        Some(("application/json", &input.to_string())),
    );
    assert_eq!(status, 202, "{body}");
    let run = body["run"].as_str().unwrap().to_owned();

    // Held mid-step on one replica, after its recorded side effect.
    let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    wait_until("the run held at the gate", Duration::from_secs(60), || {
        gate.hits() == 1
    });
    assert_eq!(effect.hits(), 1);
    let (owner, epoch) = owner_of(&mut db, &run, &replicas.names).expect("the run's owner");
    assert_eq!(epoch, 1);
    let owner_index = replicas.names.iter().position(|n| *n == owner).unwrap();
    docker_ok(&["network", "disconnect", &replicas.network, &owner]);

    // Another container claims it once the lease runs out and re-sends the in-flight request.
    wait_until(
        "another replica to take the run over",
        Duration::from_secs(60),
        || owner_of(&mut db, &run, &replicas.names).is_some_and(|(o, e)| e == 2 && o != owner),
    );
    wait_until(
        "the re-sent request at the gate",
        Duration::from_secs(60),
        || gate.hits() == 2,
    );
    gate.open();
    let survivor = ports[(owner_index + 1) % 3];
    wait_until("the run to finish", Duration::from_secs(60), || {
        http(survivor, "GET", &format!("/v1/runs/{run}"), None).1["status"] != "running"
    });
    let (_, shown) = http(survivor, "GET", &format!("/v1/runs/{run}"), None);
    assert_eq!(shown["status"], "succeeded", "{shown}");
    assert_eq!(shown["output"]["after"]["value"], 42.0, "{shown}");
    let events = event_count(&mut db, &run);

    // The partition heals: the cut-off replica comes back to the database and writes nothing
    // more to the run; it had stopped the run itself once it could not renew for a lease.
    docker_ok(&["network", "connect", &replicas.network, &owner]);
    let healed = published_port(&owner);
    wait_until(
        "the healed replica ready again",
        Duration::from_secs(60),
        || http(healed, "GET", "/readyz", None).0 == 200,
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(event_count(&mut db, &run), events);
    assert_eq!(effect.hits(), 1, "the recorded side effect was repeated");
    assert_executed_once(&url, &run);
    let logs = docker(&["logs", &owner]);
    let logs = String::from_utf8_lossy(&logs.stderr);
    assert!(
        logs.contains("could not renew its leases for a whole lease")
            || logs.contains("the journal failed under a run; it stays unfinished"),
        "{logs}"
    );
    // And it serves runs again.
    let (status, body) = http(
        healed,
        "POST",
        "/v1/graphs",
        Some(("application/yaml", ADD)),
    );
    assert_eq!(status, 201, "{body}");
    let (status, done) = http(
        healed,
        "POST",
        "/v1/runs?wait=true",
        Some((
            "application/json",
            &json!({"graph": "add", "input": {"n": 41}}).to_string(),
        )),
    );
    assert_eq!(
        (status, &done["output"]["add"]["value"]),
        (200, &json!(42.0)),
        "{done}"
    );
}
