//! Shape checks over the workspace's sources: sibling modules of a crate do not import each
//! other around a circle (`scripts/module-cycles.py`, which docs/architecture.md describes).

use std::path::Path;
use std::process::Command;

#[test]
fn sibling_modules_import_each_other_in_no_circle() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/module-cycles.py");
    let output = Command::new("python3")
        .arg(&script)
        .output()
        .expect("python3 runs scripts/module-cycles.py");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "import circles between sibling modules:\n{report}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(report.contains("no import circles"), "{report}");
}
