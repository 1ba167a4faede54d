//! Compiles the guest components for `wasm32-wasip2` and writes their paths as constants.
//!
//! A nested `cargo build` with its own target directory (`<target>/guests`) so it never
//! waits on the lock the outer build holds.

use std::{
    env,
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

const TARGET: &str = "wasm32-wasip2";

/// Size settings for the tool and agent components: the same as the `guests` alias in
/// `.cargo/config.toml`, so tests run the components `cargo guests` ships. The hostile
/// guests keep their own package profile.
const TOOL_PROFILE: [&str; 6] = [
    "--config",
    "profile.release.opt-level=\"s\"",
    "--config",
    "profile.release.debug=false",
    "--config",
    "profile.release.strip=true",
];

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .ancestors()
        .nth(2)
        .expect("tests/artifacts sits two levels below the workspace root")
        .to_path_buf();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    // OUT_DIR = <target>[/<triple>]/<profile>/build/<pkg>-<hash>/out
    let target_dir = out_dir
        .ancestors()
        .nth(4)
        .expect("OUT_DIR lies inside the target directory")
        .join("guests");

    check_wasm_target();

    // Tools and agents are built the same way, in one cargo run like `cargo guests`.
    let tools = guest_packages(&root.join("tools"), "tool-");
    let agents = guest_packages(&root.join("agents"), "agent-");
    let mut consts = String::new();
    let mut tool_list = Vec::new();
    let mut agent_list = Vec::new();
    if !tools.is_empty() || !agents.is_empty() {
        let mut args = vec!["build".to_owned()];
        args.extend(TOOL_PROFILE.iter().map(|a| (*a).to_owned()));
        for (package, _) in tools.iter().chain(&agents) {
            args.push("-p".into());
            args.push(package.clone());
        }
        cargo(&root, &target_dir, &args);
        for (packages, prefix, list) in [
            (&tools, "tool-", &mut tool_list),
            (&agents, "agent-", &mut agent_list),
        ] {
            for (package, dir) in packages {
                let name = package.trim_start_matches(prefix);
                let file = format!("{}.wasm", package.replace('-', "_"));
                let path = target_dir.join(TARGET).join("release").join(file);
                let kind = prefix.trim_end_matches('-').to_uppercase();
                constant(&mut consts, &format!("{kind}_{}", upper(name)), &path);
                list.push((name.to_owned(), path));
                println!("cargo:rerun-if-changed={}", dir.display());
            }
        }
    }

    let hostile_dir = root.join("tests/guests");
    let mut hostile_list = Vec::new();
    if hostile_dir.join("Cargo.toml").exists() {
        let manifest = hostile_dir.join("Cargo.toml");
        cargo(
            &root,
            &target_dir,
            &[
                "build".into(),
                "--manifest-path".into(),
                manifest.display().to_string(),
                "--bins".into(),
            ],
        );
        for bin in bins(&hostile_dir.join("src/bin")) {
            let path = target_dir
                .join(TARGET)
                .join("release")
                .join(format!("{bin}.wasm"));
            constant(&mut consts, &format!("HOSTILE_{}", upper(&bin)), &path);
            hostile_list.push((bin, path));
        }
        println!("cargo:rerun-if-changed={}", hostile_dir.display());
    }
    // Notice the hostile package appearing later.
    println!("cargo:rerun-if-changed={}", root.join("tests").display());
    println!("cargo:rerun-if-changed={}", root.join("tools").display());
    println!("cargo:rerun-if-changed={}", root.join("agents").display());
    println!(
        "cargo:rerun-if-changed={}",
        root.join("guest-sdk").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        root.join(".cargo/config.toml").display()
    );

    list(&mut consts, "TOOLS", &tool_list);
    list(&mut consts, "AGENTS", &agent_list);
    list(&mut consts, "HOSTILE_GUESTS", &hostile_list);
    fs::write(out_dir.join("artifacts.rs"), consts).expect("write artifacts.rs");
}

/// Fails with the fix when the standard library for the guest target is missing.
fn check_wasm_target() {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .unwrap_or_else(|e| panic!("could not run `{rustc} --print sysroot`: {e}"));
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_owned();
    let lib = Path::new(&sysroot).join("lib/rustlib").join(TARGET);
    if !lib.is_dir() {
        panic!(
            "\n\nthe `{TARGET}` Rust target is not installed ({} is missing), so the guest \
             components cannot be built.\nfix: rustup target add {TARGET}   (or run scripts/setup.sh)\n\n",
            lib.display()
        );
    }
}

fn cargo(root: &Path, target_dir: &Path, args: &[String]) {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(root)
        .args(args)
        .args(["--release", "--target", TARGET, "--target-dir"])
        .arg(target_dir);
    // Settings meant for the outer (host) build must not leak into the guest build.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PROFILE_") || key.starts_with("CARGO_FEATURE_") {
            cmd.env_remove(key.as_ref());
        }
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("could not run {cargo}: {e}"));
    if !status.success() {
        panic!(
            "building the guest components failed ({status}): {cargo} {}",
            args.join(" ")
        );
    }
}

/// `(package name, dir)` of every `<dir>/*/Cargo.toml` whose package is named `<prefix>*`
/// (`tools/` holds `tool-*`, `agents/` holds `agent-*`).
fn guest_packages(dir: &Path, prefix: &str) -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let manifest = entry.path().join("Cargo.toml");
        let Ok(text) = fs::read_to_string(&manifest) else {
            continue;
        };
        if let Some(name) = package_name(&text)
            && name.starts_with(prefix)
        {
            found.push((name, entry.path()));
        }
    }
    found.sort();
    found
}

/// The `name = "..."` of the `[package]` table; enough TOML for our own manifests.
fn package_name(toml: &str) -> Option<String> {
    let mut in_package = false;
    for line in toml.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package && let Some(rest) = line.strip_prefix("name") {
            let value = rest.trim_start().strip_prefix('=')?.trim();
            return Some(value.trim_matches('"').to_owned());
        }
    }
    None
}

fn bins(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    let path = e.path();
                    (path.extension()? == "rs")
                        .then(|| path.file_stem()?.to_str().map(str::to_owned))?
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn upper(name: &str) -> String {
    name.replace('-', "_").to_uppercase()
}

fn constant(out: &mut String, name: &str, path: &Path) {
    let _ = writeln!(
        out,
        "pub const {name}: &str = {:?};",
        path.display().to_string()
    );
}

fn list(out: &mut String, name: &str, items: &[(String, PathBuf)]) {
    let _ = writeln!(out, "pub const {name}: &[(&str, &str)] = &[");
    for (item, path) in items {
        let _ = writeln!(out, "    ({item:?}, {:?}),", path.display().to_string());
    }
    let _ = writeln!(out, "];");
}
