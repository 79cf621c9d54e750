//! Plugin files for tests: the reference plugins' executables as `cargo` builds them, the
//! Python example plugin, and plugin directories of links to them.
//!
//! `cargo test --workspace` builds the plugin executables before any test runs (each plugin
//! crate has an integration test, which makes cargo build its binary). A test run that did
//! not build them, or left them older than their sources, builds them here with cargo.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// The workspace's root directory.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The directory cargo puts this build's executables in (`target/debug`): the test
/// executable runs from its `deps` directory.
fn executables_directory() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.parent().map(Path::to_path_buf).unwrap_or(dir)
    } else {
        dir
    }
}

/// The newest modification time of the files under `dirs`.
fn newest(dirs: &[PathBuf]) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    let mut stack: Vec<PathBuf> = dirs.to_vec();
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(modified) = entry.metadata().and_then(|m| m.modified()) {
                newest = newest.max(modified);
            }
        }
    }
    newest
}

static BUILDING: Mutex<()> = Mutex::new(());

/// The executable `binary` of the workspace package `package` (its crate lives in
/// `plugins/<crate_dir>`), built by cargo first if it is missing or older than its sources.
pub fn rust_plugin(package: &str, crate_dir: &str, binary: &str) -> PathBuf {
    let _building = BUILDING.lock().unwrap_or_else(|p| p.into_inner());
    let file = executables_directory().join(binary);
    let root = workspace();
    let sources = [
        root.join("plugins").join(crate_dir),
        root.join("dsf-plugin-api").join("src"),
        root.join("dsf-fhir").join("src").join("client"),
    ];
    let built = std::fs::metadata(&file).and_then(|m| m.modified()).ok();
    if built.is_some_and(|built| built >= newest(&sources)) {
        return file;
    }
    eprintln!("building the plugin file {binary} (cargo test --workspace builds it beforehand)");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(["build", "-p", package, "--bin", binary])
        .current_dir(&root)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "cargo build -p {package} failed");
    file
}

/// The ping-pong plugin file.
pub fn ping_pong() -> PathBuf {
    rust_plugin("dsf-plugin-ping-pong", "ping-pong", "dsf-process-ping-pong")
}

/// The hello-world plugin file.
pub fn hello_world() -> PathBuf {
    rust_plugin(
        "dsf-plugin-hello-world",
        "hello-world",
        "dsf-process-hello-world",
    )
}

/// The allow-list plugin file.
pub fn allow_list() -> PathBuf {
    rust_plugin(
        "dsf-plugin-allow-list",
        "allow-list",
        "dsf-process-allow-list",
    )
}

/// The Python example plugin (ask and answer), a script run by `python3`.
pub fn python_ask_answer() -> PathBuf {
    workspace()
        .join("plugins")
        .join("python")
        .join("ask_answer.py")
}

/// A plugin directory with the reference plugin files: ping-pong, hello-world and allow-list.
pub fn reference_directory() -> tempfile::TempDir {
    directory(&[
        ("dsf-process-ping-pong", &ping_pong()),
        ("dsf-process-hello-world", &hello_world()),
        ("dsf-process-allow-list", &allow_list()),
    ])
}

/// A plugin directory holding a link to each of `files`, under the name given with it.
pub fn directory(files: &[(&str, &Path)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary directory");
    for (name, file) in files {
        link(file, &dir.path().join(name));
    }
    dir
}

/// A link at `at` to `file`.
pub fn link(file: &Path, at: &Path) {
    std::os::unix::fs::symlink(file, at).expect("link to a plugin file");
}

/// An executable shell script at `path` running `body`.
pub fn script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).expect("script written");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .expect("script made executable");
}
