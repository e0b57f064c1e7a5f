//! The operator UI in a real browser: runs the Playwright suite in `tests/ui/` (Python,
//! pinned in `tests/ui/requirements.txt`, installed once into a virtual environment under
//! `target/`) against the real binary and the built plugins, with Debian's Chromium
//! (`/usr/bin/chromium`, or `UI_CHROMIUM`). Screenshots, light and dark, land in
//! `target/ui-screens/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest as _, Sha256};

use crate::support::evhost_bin;
use crate::wasm;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from)
}

/// The virtual environment with exactly the pinned packages, made once per version of the
/// requirements file (a half-made one, without its marker, is made again).
fn python() -> PathBuf {
    let requirements = root().join("tests/ui/requirements.txt");
    let pinned = std::fs::read(&requirements).expect("reading tests/ui/requirements.txt");
    let digest = hex::encode(&Sha256::digest(&pinned)[..6]);
    let venv = target_dir().join(format!("ui-venv-{digest}"));
    let python = venv.join("bin/python");
    let marker = venv.join("installed");
    if marker.exists() {
        return python;
    }
    let _ = std::fs::remove_dir_all(&venv);
    let run = |command: &mut Command, what: &str| {
        let status = command
            .status()
            .unwrap_or_else(|e| panic!("{what}: {e} (is python3 with venv installed?)"));
        assert!(status.success(), "{what} failed");
    };
    run(
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        "creating the browser tests' virtual environment",
    );
    run(
        Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--no-deps", "-r"])
            .arg(&requirements),
        "installing Playwright and pytest (tests/ui/requirements.txt)",
    );
    std::fs::write(&marker, &pinned).unwrap();
    python
}

#[test]
fn the_operator_ui_works_in_a_real_browser() {
    let chromium = std::env::var("UI_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    assert!(
        Path::new(&chromium).exists(),
        "the browser tests need Chromium at {chromium}: apt-get install chromium (or set UI_CHROMIUM)"
    );
    let plugins = serde_json::json!({
        "user-projection": wasm::USER_PROJECTION,
        "payment-saga": wasm::PAYMENT_SAGA,
        "returns-reject": wasm::RETURNS_REJECT,
        "returns-retry": wasm::RETURNS_RETRY,
        "returns-retry-fixed": wasm::RETURNS_RETRY_FIXED,
    });
    let screens = target_dir().join("ui-screens");
    let _ = std::fs::remove_dir_all(&screens);
    let output = Command::new(python())
        .current_dir(root())
        .args(["-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA", "tests/ui"])
        .env("UI_EVHOST_BIN", evhost_bin())
        .env("UI_PLUGINS", plugins.to_string())
        .env("UI_SCREENS", &screens)
        .env("UI_CHROMIUM", &chromium)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("running pytest");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the browser tests failed:\n{stdout}\n{stderr}"
    );
    // Every scenario ran: none was skipped or deselected.
    assert!(
        !stdout.contains("skipped") && !stdout.contains("deselected"),
        "{stdout}"
    );
}
