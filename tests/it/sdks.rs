//! The Python and JavaScript SDKs as their users get them: their own tests and the
//! example plugins' tests pass natively (pytest, `node --test`), and each builds into the
//! package users install (a wheel, an npm tarball) carrying the host's WIT.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::TempDir;
use crate::wasm;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// The virtual environment the Python plugins were built in, which has pytest too.
fn venv_bin(tool: &str) -> PathBuf {
    Path::new(wasm::COMPONENTIZE_PY).with_file_name(tool)
}

/// Runs `command`, failing the test with its output unless it succeeds.
fn succeeds(command: &mut Command, what: &str) -> String {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The example plugins of `lang` (`plugins/python/*`, `plugins/js/*`).
fn examples(lang: &str) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root().join("plugins").join(lang))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_dir())
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn the_python_sdk_and_the_python_examples_pass_their_tests_under_pytest() {
    let sdk = root().join("guest-sdk/python");
    let pytest = |dir: &Path| {
        let out = TempDir::new("pytest");
        succeeds(
            Command::new(venv_bin("python"))
                .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
                .current_dir(dir)
                .env("PYTHONPATH", &sdk)
                .env("PYTHONDONTWRITEBYTECODE", "1")
                .env("TMPDIR", &out.0),
            &format!("pytest in {}", dir.display()),
        )
    };
    let report = pytest(&sdk.join("tests"));
    assert!(report.contains(" passed"), "{report}");
    let examples = examples("python");
    assert!(examples.len() >= 2, "{examples:?}");
    for example in examples {
        assert!(
            example.join("test_app.py").exists(),
            "{} has tests",
            example.display()
        );
        pytest(&example);
    }
}

/// Copies `dir` into a new folder where `node_modules/evhost` is the SDK, as `npm install`
/// makes it.
fn with_sdk(dir: &Path) -> TempDir {
    let copy = TempDir::new("node");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, copy.0.join(path.file_name().unwrap())).unwrap();
        }
    }
    std::fs::create_dir(copy.0.join("node_modules")).unwrap();
    std::os::unix::fs::symlink(root().join("guest-sdk/js"), copy.0.join("node_modules/evhost")).unwrap();
    copy
}

#[test]
fn the_javascript_sdk_and_the_javascript_examples_pass_their_tests_under_node() {
    let sdk = root().join("guest-sdk/js");
    let report = succeeds(
        Command::new("node").arg("--test").current_dir(&sdk),
        "node --test in guest-sdk/js",
    );
    assert!(report.contains("# fail 0"), "{report}");
    let examples = examples("js");
    assert!(examples.len() >= 2, "{examples:?}");
    for example in examples {
        assert!(
            example.join("app.test.js").exists(),
            "{} has tests",
            example.display()
        );
        let copy = with_sdk(&example);
        let report = succeeds(
            Command::new("node").arg("--test").current_dir(&copy.0),
            &format!("node --test for {}", example.display()),
        );
        assert!(
            report.contains("# fail 0") && !report.contains("# pass 0"),
            "{report}"
        );
    }
}

/// Runs `scripts/pack-sdks.sh` into a new folder: the wheel and the npm tarball.
fn pack() -> (TempDir, PathBuf, PathBuf) {
    let out = TempDir::new("sdk-packages");
    succeeds(
        Command::new(root().join("scripts/pack-sdks.sh"))
            .arg(&out.0)
            .env("PYTHON", venv_bin("python")),
        "scripts/pack-sdks.sh",
    );
    let wheel = out.0.join("evhost-0.1.0-py3-none-any.whl");
    let tarball = out.0.join("evhost-0.1.0.tgz");
    assert!(
        wheel.is_file() && tarball.is_file(),
        "{:?}",
        std::fs::read_dir(&out.0).unwrap().collect::<Vec<_>>()
    );
    (out, wheel, tarball)
}

#[test]
fn the_sdks_build_into_a_wheel_and_an_npm_tarball_that_carry_the_wit_and_work_installed() {
    let (work, wheel, tarball) = pack();
    let listing = succeeds(
        Command::new(venv_bin("python"))
            .args(["-m", "zipfile", "-l"])
            .arg(&wheel),
        "listing the wheel",
    );
    for file in [
        "evhost/__init__.py",
        "evhost/testing.py",
        "evhost/py.typed",
        "evhost/componentize-py.toml",
        "evhost/bindings/__init__.py",
        "evhost/wit/plugin.wit",
        "evhost/wit/deps/keyvalue/store.wit",
    ] {
        assert!(listing.contains(file), "{file} in the wheel:\n{listing}");
    }
    assert!(!listing.contains("tests/"), "{listing}");
    let listing = succeeds(
        Command::new("tar").arg("-tzf").arg(&tarball),
        "listing the tarball",
    );
    for file in [
        "package/package.json",
        "package/evhost.js",
        "package/evhost.d.ts",
        "package/testing.js",
        "package/testing.d.ts",
        "package/host-wasi.js",
        "package/host-native.js",
        "package/wit/plugin.wit",
        "package/wit/deps/keyvalue/store.wit",
    ] {
        assert!(
            listing.lines().any(|line| line == file),
            "{file} in the tarball:\n{listing}"
        );
    }
    assert!(!listing.contains("package/test/"), "{listing}");

    // Installed into a fresh environment, the wheel imports and runs a handler natively.
    let venv = work.0.join("venv");
    succeeds(
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        "python3 -m venv",
    );
    succeeds(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--no-deps", "--disable-pip-version-check"])
            .arg(&wheel),
        "installing the wheel",
    );
    let script = "import evhost\n\
                  from evhost.testing import event, run\n\
                  class EventHandler(evhost.Plugin):\n    name = 'p'\n    subscriptions = ['*']\n    \
                  def on_event(self, e):\n        evhost.kv.set('k', e.type)\n\
                  print(run(EventHandler, event('T', {})).kv_text('k'))\n";
    let out = succeeds(
        Command::new(venv.join("bin/python"))
            .args(["-c", script])
            .current_dir(&work.0),
        "using the installed wheel",
    );
    assert_eq!(out.trim(), "T");

    // Installed from the tarball, the package does the same under node.
    let project = work.0.join("node-project");
    std::fs::create_dir(&project).unwrap();
    std::fs::write(
        project.join("package.json"),
        r#"{"name": "p", "private": true, "type": "module"}"#,
    )
    .unwrap();
    succeeds(
        Command::new("npm")
            .args([
                "install",
                "--offline",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
            ])
            .arg(&tarball)
            .current_dir(&project),
        "npm install of the tarball",
    );
    let script = "import { definePlugin, kv } from 'evhost';\n\
                  import { event, run } from 'evhost/testing';\n\
                  const p = definePlugin({ name: 'p', subscriptions: ['*'], handle: (e) => kv.set('k', e.type) });\n\
                  console.log((await run(p, event('T', {}))).kvText('k'));\n";
    let out = succeeds(
        Command::new("node")
            .args(["--input-type=module", "-e", script])
            .current_dir(&project),
        "using the installed tarball",
    );
    assert_eq!(out.trim(), "T");
}
