//! The Python and JavaScript plugin SDKs, carried in the binary: `evhost new` writes the one
//! a plugin needs into a folder of its own, once per version, and the plugin depends on it
//! from there (`pip` and `npm` install it like any local package). So any installed
//! `evhost` can scaffold a plugin, without evhost's source tree.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// One file of an SDK: its path in the package and its contents.
struct File {
    path: &'static str,
    contents: &'static [u8],
}

/// The files `$path`, … of the folder `$root` (relative to this source file).
macro_rules! files {
    ($root:literal; $($path:literal),* $(,)?) => {
        &[$(File { path: $path, contents: include_bytes!(concat!($root, $path)) }),*]
    };
}

/// The host's contract, which both packages carry.
const WIT: &[File] = files!("../../wit/";
    "plugin.wit",
    "deps/config/store.wit",
    "deps/config/world.wit",
    "deps/keyvalue/atomic.wit",
    "deps/keyvalue/batch.wit",
    "deps/keyvalue/store.wit",
    "deps/keyvalue/watch.wit",
    "deps/keyvalue/world.wit",
    "deps/logging/logging.wit",
);

/// The `evhost` Python distribution (its WIT goes to `evhost/wit/`).
const PYTHON: &[File] = files!("../../guest-sdk/python/";
    "pyproject.toml",
    "README.md",
    "evhost/__init__.py",
    "evhost/_decode.py",
    "evhost/_encoding.py",
    "evhost/_errors.py",
    "evhost/_host.py",
    "evhost/_native.py",
    "evhost/bindings/__init__.py",
    "evhost/componentize-py.toml",
    "evhost/config.py",
    "evhost/kv.py",
    "evhost/log.py",
    "evhost/py.typed",
    "evhost/testing.py",
);

/// The `evhost` npm package (its WIT goes to `wit/`).
const JS: &[File] = files!("../../guest-sdk/js/";
    "package.json",
    "README.md",
    "evhost.js",
    "evhost.d.ts",
    "host-native.js",
    "host-wasi.js",
    "shared.js",
    "testing.js",
    "testing.d.ts",
);

/// Which SDK.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sdk {
    Python,
    Js,
}

impl Sdk {
    /// Its folder in `guest-sdk/` (and in the folder `install` writes).
    pub fn folder(self) -> &'static str {
        match self {
            Self::Python => "python",
            Self::Js => "js",
        }
    }

    fn files(self) -> &'static [File] {
        match self {
            Self::Python => PYTHON,
            Self::Js => JS,
        }
    }

    /// Where the package keeps the WIT.
    fn wit(self) -> &'static str {
        match self {
            Self::Python => "evhost/wit",
            Self::Js => "wit",
        }
    }
}

/// Where `evhost new` keeps the SDKs of this version: `$XDG_DATA_HOME/evhost/sdk/VERSION`,
/// or `~/.local/share/evhost/sdk/VERSION`.
pub fn default_root() -> anyhow::Result<PathBuf> {
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/share")))
        .context("neither XDG_DATA_HOME nor HOME is set: pass --sdk")?;
    Ok(data.join("evhost").join("sdk").join(env!("CARGO_PKG_VERSION")))
}

/// Writes `sdk` into `root/python` or `root/js` (a file whose contents already match is
/// left alone) and returns that folder.
pub fn install(sdk: Sdk, root: &Path) -> anyhow::Result<PathBuf> {
    let dir = root.join(sdk.folder());
    let wit = WIT
        .iter()
        .map(|file| (Path::new(sdk.wit()).join(file.path), file.contents));
    let files = sdk
        .files()
        .iter()
        .map(|file| (PathBuf::from(file.path), file.contents));
    for (path, contents) in files.chain(wit) {
        write_if_changed(&dir.join(path), contents)?;
    }
    Ok(dir)
}

/// Writes `contents` to `path` unless it holds them already, through a file beside it
/// renamed into place, so that two `evhost new` at once never leave half a file.
fn write_if_changed(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    if std::fs::read(path).is_ok_and(|current| current == contents) {
        return Ok(());
    }
    let parent = path.parent().expect("an SDK file is in a folder");
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let temporary = parent.join(format!(
        ".{}.{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    std::fs::write(&temporary, contents).with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The files of `dir` a package is made of, relative to it: tests, caches, hidden
    /// files and installed packages left out.
    fn package_files(dir: &Path, under: &Path, found: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            if name.starts_with('.')
                || ["test", "tests", "__pycache__", "node_modules", "wit"].contains(&name.as_str())
            {
                continue;
            }
            let relative = under.join(&name);
            if path.is_dir() {
                package_files(&path, &relative, found);
            } else {
                found.push(relative.display().to_string());
            }
        }
    }

    #[test]
    fn the_binary_carries_every_file_of_both_sdks_and_of_the_wit() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for sdk in [Sdk::Python, Sdk::Js] {
            let mut found = Vec::new();
            package_files(
                &root.join("guest-sdk").join(sdk.folder()),
                Path::new(""),
                &mut found,
            );
            found.sort();
            let mut carried: Vec<String> = sdk.files().iter().map(|file| file.path.to_owned()).collect();
            carried.sort();
            assert_eq!(
                carried,
                found,
                "the files of the {} SDK in src/sdk.rs",
                sdk.folder()
            );
        }
        let mut wit = Vec::new();
        package_files(&root.join("wit"), Path::new(""), &mut wit);
        wit.retain(|path| path.ends_with(".wit"));
        wit.sort();
        let mut carried: Vec<String> = WIT.iter().map(|file| file.path.to_owned()).collect();
        carried.sort();
        assert_eq!(carried, wit, "the WIT files in src/sdk.rs");
    }

    #[test]
    fn installing_writes_the_package_and_its_wit_and_rewrites_only_what_changed() {
        let root = std::env::temp_dir().join(format!("evhost-sdk-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let js = install(Sdk::Js, &root).unwrap();
        assert_eq!(std::fs::read(js.join("evhost.js")).unwrap(), JS[2].contents);
        assert!(js.join("wit/plugin.wit").is_file());
        let python = install(Sdk::Python, &root).unwrap();
        assert!(python.join("evhost/wit/deps/logging/logging.wit").is_file());
        // A file edited by hand is put back; the rest are left as they are.
        std::fs::write(python.join("evhost/kv.py"), "edited").unwrap();
        install(Sdk::Python, &root).unwrap();
        assert_eq!(
            std::fs::read(python.join("evhost/kv.py")).unwrap(),
            PYTHON[11].contents
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
