//! Builds the example plugins (`../plugins`) and the test plugins (`plugins/`) for
//! `wasm32-wasip2` and generates a constant with the path of each `.wasm`, so tests load
//! components built from source, never committed binaries. The few test plugins that do
//! what Rust cannot express (grow a table, run a start function) are core modules in
//! `plugins/wat/`, made components of the `evhost:plugin/handler` world here. The Python
//! plugins (`../plugins/python/*`, `plugins/python/*`: an `app.py` each) are built with
//! the pinned `componentize-py`, installed once into a virtual environment under
//! `target/` (or the one `COMPONENTIZE_PY` names); the JavaScript ones (`app.js` each, in
//! `../plugins/js/*` and `plugins/js/*`) with the pinned `componentize-js`, installed once
//! under `target/` with `npm ci` from `js-toolchain/`'s lockfile.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap().to_path_buf();
    // A target dir of their own: the outer cargo holds the lock on the workspace's.
    let target_dir = root.join("target").join("wasm-plugins");
    let mut constants = String::new();
    for workspace in [root.join("plugins"), manifest_dir.join("plugins")] {
        for path in ["Cargo.toml", "Cargo.lock"] {
            println!("cargo:rerun-if-changed={}", workspace.join(path).display());
        }
        for member in members(&workspace) {
            println!("cargo:rerun-if-changed={}", member.display());
        }
        build(&workspace, &target_dir);
        for member in members(&workspace) {
            let crate_name = member.file_name().unwrap().to_str().unwrap().replace('-', "_");
            let wasm = target_dir
                .join("wasm32-wasip2")
                .join("release")
                .join(format!("{crate_name}.wasm"));
            assert!(wasm.exists(), "{} was not built", wasm.display());
            constants.push_str(&format!(
                "pub const {}: &str = {:?};\n",
                crate_name.to_uppercase(),
                wasm.display().to_string()
            ));
        }
    }
    for path in ["guest-sdk/src", "guest-sdk/Cargo.toml", "wit"] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
    let wat_dir = manifest_dir.join("plugins").join("wat");
    println!("cargo:rerun-if-changed={}", wat_dir.display());
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
    for (name, component) in wat_components(&wat_dir, &root.join("wit")) {
        let wasm = out_dir.join(format!("{name}.wasm"));
        std::fs::write(&wasm, component).unwrap();
        constants.push_str(&format!(
            "pub const {}: &str = {:?};\n",
            name.replace('-', "_").to_uppercase(),
            wasm.display().to_string()
        ));
    }
    constants.push_str(&format!(
        "/// The `componentize-py` the Python plugins were built with.\npub const COMPONENTIZE_PY: &str = {:?};\n",
        componentize_py(&root).display().to_string()
    ));
    constants.push_str(&format!(
        "/// The `componentize-js` the JavaScript plugins were built with.\npub const COMPONENTIZE_JS: &str = {:?};\n",
        componentize_js(&root, &manifest_dir).display().to_string()
    ));
    // Beside the Rust plugins, where `bench_polyglot` finds them too.
    let built = target_dir.clone();
    for (name, wasm) in python_components(&root, &out_dir, &built.join("python")) {
        constants.push_str(&format!(
            "pub const PY_{}: &str = {:?};\n",
            name.replace('-', "_").to_uppercase(),
            wasm.display().to_string()
        ));
    }
    for (name, wasm) in js_components(&root, &manifest_dir, &out_dir, &built.join("js")) {
        constants.push_str(&format!(
            "pub const JS_{}: &str = {:?};\n",
            name.replace('-', "_").to_uppercase(),
            wasm.display().to_string()
        ));
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap()).join("plugins.rs");
    std::fs::write(out, constants).unwrap();
}

/// Each `NAME.wat` core module in `dir`, with the handler world's metadata embedded and
/// encoded as a component.
fn wat_components(dir: &Path, wit: &Path) -> Vec<(String, Vec<u8>)> {
    let mut resolve = wit_parser::Resolve::default();
    let (package, _) = resolve.push_dir(wit).expect("reading the WIT package");
    let world = resolve
        .select_world(&[package], Some("handler"))
        .expect("the handler world");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wat"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            println!("cargo:rerun-if-changed={}", path.display());
            let mut module = wat::parse_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            wit_component::embed_component_metadata(
                &mut module,
                &resolve,
                world,
                wit_component::StringEncoding::UTF8,
            )
            .unwrap();
            let component = wit_component::ComponentEncoder::default()
                .module(&module)
                .and_then(|encoder| encoder.validate(true).encode())
                .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            let name = path.file_stem().unwrap().to_str().unwrap().to_owned();
            (name, component)
        })
        .collect()
}

/// The plugin crates of a workspace: every directory beside its Cargo.toml that has one.
fn members(workspace: &Path) -> Vec<PathBuf> {
    let mut members: Vec<PathBuf> = std::fs::read_dir(workspace)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.join("Cargo.toml").exists() && path.join("src").exists())
        .collect();
    members.sort();
    members
}

fn build(workspace: &Path, target_dir: &Path) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace)
        .args(["build", "--release", "--target", "wasm32-wasip2", "--target-dir"])
        .arg(target_dir);
    // Settings meant for the host build must not leak into the guest build.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_") && key != "CARGO_HOME" || key == "RUSTFLAGS" || key == "RUSTC_WRAPPER" {
            command.env_remove(key.as_ref());
        }
    }
    let status = command.status().expect("running cargo for the plugins");
    assert!(
        status.success(),
        "building the plugins in {} failed; is the wasm32-wasip2 target installed? (rustup target add wasm32-wasip2)",
        workspace.display()
    );
}

/// The pinned Python component toolchain.
const COMPONENTIZE_PY_VERSION: &str = "0.25.1";
/// The pinned pytest the Python SDK's and plugins' own tests run with.
const PYTEST_VERSION: &str = "8.3.4";

/// `componentize-py`: `$COMPONENTIZE_PY`, or the pinned version in a virtual environment
/// under `target/` (with pytest beside it), created (with `python3 -m venv` and `pip`) the
/// first time.
fn componentize_py(root: &Path) -> PathBuf {
    println!("cargo:rerun-if-env-changed=COMPONENTIZE_PY");
    if let Some(path) = std::env::var_os("COMPONENTIZE_PY") {
        return PathBuf::from(path);
    }
    let venv = root
        .join("target")
        .join(format!("componentize-py-{COMPONENTIZE_PY_VERSION}"));
    let tool = venv.join("bin").join("componentize-py");
    let pytest = venv.join("bin").join("pytest");
    if tool.exists() && pytest.exists() {
        return tool;
    }
    let run = |command: &mut Command, what: &str| {
        let status = command
            .status()
            .unwrap_or_else(|e| panic!("{what}: {e} (is python3 with venv installed?)"));
        assert!(status.success(), "{what} failed");
    };
    run(
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        "creating a Python virtual environment for componentize-py",
    );
    run(
        Command::new(venv.join("bin").join("pip")).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            &format!("componentize-py=={COMPONENTIZE_PY_VERSION}"),
            &format!("pytest=={PYTEST_VERSION}"),
        ]),
        "installing componentize-py and pytest",
    );
    tool
}

/// Builds every Python plugin (a directory with an `app.py`) into `built/NAME.wasm`,
/// working on copies in `out_dir`.
fn python_components(root: &Path, out_dir: &Path, built: &Path) -> Vec<(String, PathBuf)> {
    let sdk = root.join("guest-sdk").join("python").join("evhost");
    println!("cargo:rerun-if-changed={}", sdk.display());
    let plugins = apps(
        &[
            root.join("plugins").join("python"),
            root.join("tests").join("plugins").join("python"),
        ],
        "app.py",
    );
    if plugins.is_empty() {
        return Vec::new();
    }
    let tool = componentize_py(root);
    // The build writes `__pycache__` beside what it reads: copies keep the sources clean
    // (a change there would make cargo run this script again).
    let sources = out_dir.join("python");
    let _ = std::fs::remove_dir_all(&sources);
    // The `evhost` package as pip installs it: its `componentize-py.toml` points
    // componentize-py at its `wit/` (a link to the workspace's), so no `-d` is needed.
    copy_python(&sdk, &sources.join("sdk").join("evhost"));
    plugins
        .into_iter()
        .map(|app| {
            let name = app.file_name().unwrap().to_str().unwrap().to_owned();
            std::fs::create_dir_all(built).unwrap();
            let wasm = built.join(format!("{name}.wasm"));
            let copy = sources.join("plugins").join(&name);
            copy_python(&app, &copy);
            let status = Command::new(&tool)
                .current_dir(&copy)
                .args(["-w", "handler", "componentize", "app", "-p", "."])
                .arg("-p")
                .arg(sources.join("sdk"))
                .arg("-o")
                .arg(&wasm)
                .status()
                .unwrap_or_else(|e| panic!("running {}: {e}", tool.display()));
            assert!(
                status.success(),
                "building the Python plugin {} failed",
                app.display()
            );
            (name, wasm)
        })
        .collect()
}

/// Copies what a Python package is made of under `from` to `to` (its `.py` files, a
/// `py.typed`, a `componentize-py.toml` and WIT files, following links), keeping the
/// layout and leaving out tests.
fn copy_python(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            if path.file_name().is_some_and(|name| name != "__pycache__") {
                copy_python(&path, &target);
            }
        } else if path
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.starts_with("test_"))
        {
            continue;
        } else if path
            .extension()
            .is_some_and(|ext| ext == "py" || ext == "typed" || ext == "toml" || ext == "wit")
        {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

/// The directory holding `node_modules/.bin/componentize-js`: the lockfile of
/// `tests/js-toolchain` installed under `target/` with `npm ci` the first time.
fn componentize_js(root: &Path, manifest_dir: &Path) -> PathBuf {
    let toolchain = manifest_dir.join("js-toolchain");
    let lock =
        std::fs::read(toolchain.join("package-lock.json")).expect("reading js-toolchain/package-lock.json");
    println!("cargo:rerun-if-changed={}", toolchain.display());
    let dir = root.join("target").join("componentize-js");
    let tool = dir.join("node_modules").join(".bin").join("componentize-js");
    if tool.exists() && std::fs::read(dir.join("package-lock.json")).ok().as_deref() == Some(&lock[..]) {
        return tool;
    }
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["package.json", "package-lock.json"] {
        std::fs::copy(toolchain.join(file), dir.join(file)).unwrap();
    }
    let status = Command::new("npm")
        .current_dir(&dir)
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .status()
        .unwrap_or_else(|e| {
            panic!("running npm ci for componentize-js: {e} (is node 20 with npm installed?)")
        });
    assert!(status.success(), "npm ci in {} failed", dir.display());
    tool
}

/// Builds every JavaScript plugin (a directory with an `app.js`, which imports the SDK as
/// the package `evhost`) into `built/NAME.wasm`, as a user's build does: esbuild bundles
/// `app.js` with the packages it imports, componentize-js makes the bundle a component.
/// It works on copies in `out_dir`, where `node_modules/evhost` is the SDK.
fn js_components(root: &Path, manifest_dir: &Path, out_dir: &Path, built: &Path) -> Vec<(String, PathBuf)> {
    let sdk = root.join("guest-sdk").join("js");
    println!("cargo:rerun-if-changed={}", sdk.display());
    let plugins = apps(
        &[
            root.join("plugins").join("js"),
            manifest_dir.join("plugins").join("js"),
        ],
        "app.js",
    );
    if plugins.is_empty() {
        return Vec::new();
    }
    let tool = componentize_js(root, manifest_dir);
    let esbuild = tool.with_file_name("esbuild");
    plugins
        .into_iter()
        .map(|app| {
            let name = app.file_name().unwrap().to_str().unwrap().to_owned();
            std::fs::create_dir_all(built).unwrap();
            let wasm = built.join(format!("{name}.wasm"));
            let copy = out_dir.join("js").join(&name);
            let _ = std::fs::remove_dir_all(&copy);
            std::fs::create_dir_all(copy.join("node_modules")).unwrap();
            for entry in std::fs::read_dir(&app).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|ext| ext == "js") {
                    std::fs::copy(&path, copy.join(path.file_name().unwrap())).unwrap();
                }
            }
            std::os::unix::fs::symlink(&sdk, copy.join("node_modules").join("evhost")).unwrap();
            run(
                Command::new(&esbuild)
                    .current_dir(&copy)
                    .arg("app.js")
                    .args(JS_BUNDLE)
                    .arg("--outfile=bundle.js"),
                &format!("bundling the JavaScript plugin {}", app.display()),
            );
            run(
                Command::new(&tool)
                    .current_dir(&copy)
                    .arg("bundle.js")
                    .arg("-w")
                    .arg(root.join("wit"))
                    .args(["-n", "handler", "-o"])
                    .arg(&wasm)
                    .args(JS_DISABLED_FEATURES),
                &format!("building the JavaScript plugin {}", app.display()),
            );
            (name, wasm)
        })
        .collect()
}

/// Runs `command`, panicking with `what` if it cannot start or fails.
fn run(command: &mut Command, what: &str) {
    let status = command.status().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(status.success(), "{what} failed");
}

/// esbuild's options for a plugin, as the `evhost new` templates have them: one ES module,
/// the host's interfaces left as imports for componentize-js.
const JS_BUNDLE: [&str; 6] = [
    "--bundle",
    "--format=esm",
    "--platform=neutral",
    "--main-fields=module,main",
    "--external:wasi:*",
    "--external:evhost:*",
];

/// What componentize-js would otherwise import that the host does not provide: HTTP. (It
/// provides stdio, which goes to the plugin's log, randomness and clocks.)
const JS_DISABLED_FEATURES: [&str; 3] = ["-d", "http", "fetch-event"];

/// The plugin directories under `dirs` (those that exist) holding a `file`, sorted.
fn apps(dirs: &[PathBuf], file: &str) -> Vec<PathBuf> {
    let mut apps = Vec::new();
    for dir in dirs {
        println!("cargo:rerun-if-changed={}", dir.display());
        if !dir.exists() {
            continue;
        }
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.join(file).exists())
            .collect();
        found.sort();
        apps.extend(found);
    }
    apps
}
