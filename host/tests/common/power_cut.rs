//! What a power cut leaves of the journal's write-ahead log: the child process reports each
//! `fdatasync` of a segment as `sync <segment> <length>`, and after SIGKILLing it the test drops
//! every written sector past those lengths at random.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use sandgraph::journal::wal::SyncHook;

/// A small deterministic generator (the seed is printed, so a failure can be rerun).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A seed from the clock (odd, so never the generator's fixed point).
pub fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1
}

/// The child's hook: tells the parent, through `say`, each synced length of each segment.
pub fn sync_reporter(say: impl Fn(String) + Send + Sync + 'static) -> SyncHook {
    Arc::new(move |path: &Path, len: u64| {
        say(format!(
            "sync {} {len}",
            path.file_name().unwrap().to_string_lossy()
        ))
    })
}

/// Notes a `sync <segment> <length>` line in `synced` (the longest per segment); false for any
/// other line.
pub fn note_sync(line: &str, synced: &mut HashMap<String, u64>) -> bool {
    let mut words = line.split(' ');
    match (words.next(), words.next(), words.next()) {
        (Some("sync"), Some(name), Some(len)) => {
            let len: u64 = len.parse().unwrap();
            let e = synced.entry(name.to_string()).or_default();
            *e = (*e).max(len);
            true
        }
        _ => false,
    }
}

/// Drops what a power cut may drop from each log segment under `journal/wal`: every written
/// 512-byte sector past the last synced length is kept, zeroed or scrambled. Returns how many
/// sectors it touched.
pub fn cut_power_to_log(journal: &Path, synced: &HashMap<String, u64>, rng: &mut Rng) -> usize {
    let mut touched = 0;
    for entry in std::fs::read_dir(journal.join("wal")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let synced = synced.get(&name).copied().unwrap_or(0) as usize;
        let mut bytes = std::fs::read(&path).unwrap();
        let mut at = synced;
        while at < bytes.len() {
            let end = ((at / 512) + 1) * 512;
            let end = end.min(bytes.len());
            if bytes[at..end].iter().all(|b| *b == 0) {
                // Never written (the segment is preallocated): a power cut leaves it zeros.
                at = end;
                continue;
            }
            match rng.next() % 3 {
                0 => {}
                1 => bytes[at..end].fill(0),
                _ => bytes[at..end]
                    .iter_mut()
                    .for_each(|b| *b = rng.next() as u8),
            }
            touched += 1;
            at = end;
        }
        std::fs::write(&path, bytes).unwrap();
    }
    touched
}

/// A copy of this test binary running one test as the writer whose power is cut: it prints
/// `ready` once set up, waits for `go` on its stdin, and reports on stdout until killed.
pub struct Writer {
    child: std::process::Child,
    reader: std::thread::JoinHandle<()>,
}

impl Writer {
    /// Starts this test binary again, filtered to `test`, with `env` set (the test sees it and
    /// becomes the writer); waits for its `ready` line, then hands each later line to
    /// `on_line` on a thread of its own.
    pub fn start(
        test: &str,
        env: &[(&str, String)],
        mut on_line: impl FnMut(String) + Send + 'static,
    ) -> Writer {
        use std::io::BufRead;
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while !line.starts_with("ready") {
            line.clear();
            assert!(
                stdout.read_line(&mut line).unwrap() > 0,
                "the child exited before it was ready"
            );
        }
        let reader = std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { return };
                on_line(line);
            }
        });
        Writer { child, reader }
    }

    /// Tells the writer to start writing.
    pub fn go(&mut self) {
        use std::io::Write;
        writeln!(self.child.stdin.as_mut().unwrap(), "go").unwrap();
    }

    /// Waits until `enough()` holds (failing after two minutes, or if the writer dies), then
    /// SIGKILLs it at a random moment within the next 20 ms and waits until every line it
    /// printed has been handed on.
    pub fn kill_when(mut self, rng: &mut Rng, what: &str, enough: impl Fn() -> bool) {
        use std::time::{Duration, Instant};
        let deadline = Instant::now() + Duration::from_secs(120);
        while !enough() {
            assert!(
                Instant::now() < deadline,
                "the child reported too few {what}"
            );
            assert!(self.child.try_wait().unwrap().is_none(), "the child died");
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_micros(rng.next() % 20_000));
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.reader.join().unwrap();
    }
}

/// In the writer: says `ready` through `say`, waits for the parent's `go`, and from then on
/// lets any panic (a failed write on any thread) take the whole process down, so the parent
/// sees it die rather than a writer that quietly stopped.
pub fn ready_then_wait_for_go(say: impl Fn(String), who: &'static str) {
    say("ready".into());
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).unwrap();
    std::panic::set_hook(Box::new(move |info| {
        eprintln!("{who}: {info}");
        std::process::exit(101);
    }));
}
