//! The person at the portal in a real browser: `tests/portal/browser.py` (Debian's
//! chromium, headless, through chromedriver and selenium) run with a mode; it prints one
//! JSON object, and saves screenshots under `target/tmp/portal-screenshots`.

use std::path::{Path, PathBuf};

/// Where the screenshots go.
pub fn screenshots() -> PathBuf {
    // Set for tests; the demo example includes this module too.
    let tmp = option_env!("CARGO_TARGET_TMPDIR")
        .unwrap_or(concat!(env!("CARGO_MANIFEST_DIR"), "/target/tmp"));
    Path::new(tmp).join("portal-screenshots")
}

/// Runs `browser.py BASE LOGIN PASSWORD SCREENSHOTS MORE…`; panics with its stderr when
/// it fails; returns what it printed.
pub async fn run(base: &str, login: &str, password: &str, more: &[&str]) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/portal/browser.py");
    // Debian's python3, which has python3-selenium (a pyenv one may come first on PATH).
    let output = tokio::process::Command::new("/usr/bin/python3")
        .arg(script)
        .arg(base)
        .arg(login)
        .arg(password)
        .arg(screenshots())
        .args(more)
        .output()
        .await
        .expect("run python3");
    assert!(
        output.status.success(),
        "browser.py {more:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("browser.py prints JSON")
}
