//! A throwaway PostgreSQL cluster for tests: `initdb` into a temporary directory, the server on
//! a free 127.0.0.1 port, stopped and deleted when dropped. Uses Debian's binaries
//! (`/usr/lib/postgresql/<version>/bin`, or `SANDGRAPH_PG_BIN`); scripts/setup.sh installs them.
//! PostgreSQL refuses to run as root, so under root the cluster runs as the `postgres` user.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Postgres {
    dir: tempfile::TempDir,
    server: Child,
    port: u16,
    /// `-c name=value` settings the server starts with.
    settings: Vec<String>,
    /// Addresses it listens on: 127.0.0.1, and a Docker network's gateway where a test's
    /// containers connect.
    listen: String,
}

fn bin_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("SANDGRAPH_PG_BIN") {
        return PathBuf::from(p);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    versions.retain(|p| p.join("initdb").exists());
    versions.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    versions.pop().unwrap_or_else(|| {
        panic!(
            "PostgreSQL's server binaries are not installed (no /usr/lib/postgresql/*/bin/initdb); run scripts/setup.sh or set SANDGRAPH_PG_BIN"
        )
    })
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// `program args…`, as the `postgres` user when this process is root (setpriv execs the
/// program itself, so the child's pid is the server's).
fn command(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ])
        .arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Postgres {
    /// Creates and starts a cluster with a trusted superuser `sandgraph`.
    pub fn start() -> Postgres {
        Postgres::start_with(&[], &[])
    }

    /// A cluster that also accepts TLS (`ssl=on`) with this certificate and key (PEM).
    pub fn start_with_tls(cert_pem: &str, key_pem: &str) -> Postgres {
        Postgres::start_with(
            &[
                "ssl=on",
                "ssl_cert_file=server.crt",
                "ssl_key_file=server.key",
            ],
            &[("server.crt", cert_pem), ("server.key", key_pem)],
        )
    }

    /// A cluster that also listens on `gateway`, the host's address on a Docker network the
    /// test created, and trusts connections from that network's `subnet` (containers).
    pub fn start_for_network(gateway: &str, subnet: &str) -> Postgres {
        let hba = format!(
            "local all all trust\nhost all all 127.0.0.1/32 trust\nhost all all {subnet} trust\n"
        );
        Postgres::start_on(
            &format!("127.0.0.1,{gateway}"),
            &[],
            &[("pg_hba.conf", &hba)],
        )
    }

    /// [`Postgres::start`] with `-c` settings and files written into the data directory.
    pub fn start_with(settings: &[&str], files: &[(&str, &str)]) -> Postgres {
        Postgres::start_on("127.0.0.1", settings, files)
    }

    fn start_on(listen: &str, settings: &[&str], files: &[(&str, &str)]) -> Postgres {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("sandgraph-pg-")
            .tempdir()
            .unwrap();
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown of the cluster directory to postgres failed");
        }
        let data = dir.path().join("data");
        let out = command(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "sandgraph", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for (name, text) in files {
            let path = data.join(name);
            std::fs::write(&path, text).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            if is_root() {
                let ok = Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(&path)
                    .status()
                    .unwrap()
                    .success();
                assert!(ok, "chown of {name} to postgres failed");
            }
        }
        let settings: Vec<String> = settings.iter().map(|s| s.to_string()).collect();
        let port = free_port();
        let server = server(dir.path(), port, listen, &settings);
        let pg = Postgres {
            dir,
            server,
            port,
            settings,
            listen: listen.to_owned(),
        };
        pg.wait_ready();
        pg
    }

    fn wait_ready(&self) {
        let pg = self;
        let deadline = Instant::now() + Duration::from_secs(30);
        while postgres::Client::connect(&pg.url("postgres"), postgres::NoTls).is_err() {
            assert!(
                Instant::now() < deadline,
                "the test PostgreSQL did not accept connections within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (fast shutdown: every session is ended) and starts it again on the same
    /// port and data, as a database restart or failover does to its clients.
    pub fn restart(&mut self) {
        self.stop();
        self.server = server(self.dir.path(), self.port, &self.listen, &self.settings);
        self.wait_ready();
    }

    /// The URL of database `db` in this cluster.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://sandgraph@127.0.0.1:{}/{db}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates database `name` and returns its URL.
    pub fn database(&self, name: &str) -> String {
        let mut c = postgres::Client::connect(&self.url("postgres"), postgres::NoTls).unwrap();
        c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        self.url(name)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// The server of the cluster in `dir` on `listen` (comma-separated addresses), port `port`.
fn server(dir: &Path, port: u16, listen: &str, settings: &[String]) -> Child {
    let mut c = command(&bin_dir().join("postgres"));
    for s in settings {
        c.args(["-c", s]);
    }
    c.arg("-D")
        .arg(dir.join("data"))
        .args(["-h", listen, "-p", &port.to_string(), "-k"])
        .arg(dir)
        // fsync stays on: commits cost what they cost in production, which group commit
        // is measured against.
        .args(["-c", "max_connections=200"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Postgres {
    fn stop(&mut self) {
        // SIGINT: PostgreSQL's fast shutdown.
        let _ = Command::new("kill")
            .args(["-INT", &self.server.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.server.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}
