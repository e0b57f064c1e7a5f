//! The book against the code: the configuration reference names every key `evhost.toml`
//! takes and no other, with the defaults the code has, and every configuration and
//! manifest example in the book is accepted as it is.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use evhost::config::{Config, NatsSettings, OutboxSettings};
use evhost::plugins::Manifest;

fn docs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs")
}

/// The fields of the struct a TOML table at `header` (`[bus]`, `[[auth.tokens]]`, or
/// `None` for the top level) deserializes into, as serde's derive names them when it
/// refuses an unknown one; `None` when the table is not a struct with fields.
fn fields(header: Option<&str>) -> Option<Vec<String>> {
    let text = match header {
        Some(header) => format!("{header}\n__probe__ = 1\n"),
        None => "__probe__ = 1\n".to_owned(),
    };
    let error = toml::from_str::<Config>(&text).err()?.to_string();
    let line = error
        .lines()
        .find(|line| line.contains("unknown field `__probe__`"))?;
    let (_, expected) = line.split_once("expected")?;
    Some(
        expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect(),
    )
}

/// Every section of `evhost.toml` (`""` for the top level, `[bus]`, `[[auth.tokens]]`, …)
/// with its keys that are values rather than tables, read off the real `Config`.
fn config_sections() -> BTreeMap<String, BTreeSet<String>> {
    fn walk(path: &str, header: Option<&str>, sections: &mut BTreeMap<String, BTreeSet<String>>) {
        let mut keys = BTreeSet::new();
        for field in fields(header).expect("a section is a struct") {
            let dotted = if path.is_empty() {
                field.clone()
            } else {
                format!("{path}.{field}")
            };
            let table = format!("[{dotted}]");
            let array = format!("[[{dotted}]]");
            if fields(Some(&table)).is_some() {
                walk(&dotted, Some(&table), sections);
            } else if fields(Some(&array)).is_some() {
                walk(&dotted, Some(&array), sections);
            } else {
                keys.insert(field);
            }
        }
        sections.insert(header.unwrap_or_default().to_owned(), keys);
    }
    let mut sections = BTreeMap::new();
    walk("", None, &mut sections);
    sections
}

/// A documented key: its default cell when it is a TOML value in backticks.
#[derive(Debug)]
struct Row {
    key: String,
    default: Option<String>,
}

/// The reference's sections: each `## …` heading (`Top-level keys` read as `""`, a
/// `` `[bus]` `` as `[bus]`) with the rows of the first table under it.
fn documented_sections(markdown: &str) -> BTreeMap<String, Vec<Row>> {
    let mut sections: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut table_seen = false;
    for line in markdown.lines() {
        if let Some(title) = line.strip_prefix("## ") {
            let title = title.trim();
            current = if title == "Top-level keys" {
                Some(String::new())
            } else if title.starts_with("`[") {
                Some(title.trim_matches('`').to_owned())
            } else {
                None
            };
            table_seen = false;
            if let Some(section) = &current {
                assert!(
                    sections.insert(section.clone(), Vec::new()).is_none(),
                    "the section {title} is documented twice"
                );
            }
            continue;
        }
        let Some(section) = &current else { continue };
        let cells: Vec<&str> = line.trim().split('|').map(str::trim).collect();
        if cells.len() < 4 || !line.trim_start().starts_with('|') {
            if table_seen && !line.trim().is_empty() && !line.trim_start().starts_with('|') {
                current = None; // only the first table of a section
            }
            continue;
        }
        table_seen = true;
        let (key, default) = (cells[1], cells[2]);
        if key == "key" || key.starts_with("---") {
            continue;
        }
        let key = key
            .strip_prefix('`')
            .and_then(|key| key.strip_suffix('`'))
            .unwrap_or_else(|| panic!("a key cell is one name in backticks: {line}"));
        let default = default
            .strip_prefix('`')
            .and_then(|value| value.strip_suffix('`'))
            .map(str::to_owned);
        sections.get_mut(section).unwrap().push(Row {
            key: key.to_owned(),
            default,
        });
    }
    sections
}

/// The value at `path` in the serialized defaults, with the optional sections present.
fn default_value(section: &str, key: &str) -> Option<toml::Value> {
    let config = Config {
        outbox: Some(OutboxSettings::new("postgres://db/app".to_owned())),
        nats: Some(NatsSettings::new("nats://127.0.0.1:4222".to_owned())),
        ..Config::default()
    };
    let mut value = toml::Value::try_from(&config).unwrap();
    let path = section.trim_matches(|c| c == '[' || c == ']');
    for part in path.split('.').filter(|part| !part.is_empty()).chain([key]) {
        value = value.get(part)?.clone();
    }
    Some(value)
}

#[test]
fn the_configuration_reference_documents_every_key_with_the_default_the_code_has() {
    let page = docs().join("src/running/configuration.md");
    let markdown = std::fs::read_to_string(&page).unwrap_or_else(|e| panic!("{}: {e}", page.display()));
    let documented = documented_sections(&markdown);
    let actual = config_sections();
    let name = |section: &str| {
        if section.is_empty() {
            "Top-level keys".to_owned()
        } else {
            format!("`{section}`")
        }
    };

    let mut problems = Vec::new();
    for (section, keys) in &actual {
        let Some(rows) = documented.get(section) else {
            problems.push(format!("no `## {}` section", name(section)));
            continue;
        };
        let listed: BTreeSet<String> = rows.iter().map(|row| row.key.clone()).collect();
        for key in keys.difference(&listed) {
            problems.push(format!("{}: `{key}` is not documented", name(section)));
        }
        for key in listed.difference(keys) {
            problems.push(format!(
                "{}: `{key}` is documented but is no key of evhost.toml",
                name(section)
            ));
        }
        for row in rows {
            let (Some(cell), Some(value)) = (&row.default, default_value(section, &row.key)) else {
                continue;
            };
            let parsed = toml::from_str::<toml::Table>(&format!("v = {cell}"))
                .ok()
                .and_then(|mut table| table.remove("v"));
            if parsed.as_ref() != Some(&value) {
                problems.push(format!(
                    "{}: `{}` is documented with the default `{cell}`, but it is `{value}`",
                    name(section),
                    row.key
                ));
            }
        }
    }
    for section in documented.keys().filter(|section| !actual.contains_key(*section)) {
        problems.push(format!("`## {}` is no section of evhost.toml", name(section)));
    }
    assert!(
        problems.is_empty(),
        "{} does not match the configuration the code reads:\n  {}",
        page.display(),
        problems.join("\n  ")
    );
}

/// The `.toml` files of `docs/examples/<dir>`.
fn examples(dir: &str) -> Vec<PathBuf> {
    let dir = docs().join("examples").join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no examples", dir.display());
    files
}

#[test]
fn every_configuration_example_in_the_book_is_accepted() {
    for path in examples("config") {
        let text = std::fs::read_to_string(&path).unwrap();
        if let Err(error) = Config::parse(&text, &path) {
            panic!("the book's example {} is refused: {error}", path.display());
        }
    }
}

#[test]
fn every_manifest_example_in_the_book_is_accepted() {
    for path in examples("manifest") {
        let text = std::fs::read_to_string(&path).unwrap();
        if let Err(error) = Manifest::parse(&text, &path) {
            panic!("the book's example {} is refused: {error}", path.display());
        }
    }
}

/// The Markdown files of the book, recursively.
fn pages(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            pages(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "md") {
            found.push(path);
        }
    }
}

/// mdBook shows a missing file as an error it does not fail on, and a missing anchor as an
/// empty block: the book's code would silently vanish.
#[test]
fn every_file_the_book_includes_exists_and_holds_its_anchor() {
    let mut found = Vec::new();
    pages(&docs().join("src"), &mut found);
    let mut problems = Vec::new();
    let mut includes = 0;
    for page in found {
        let text = std::fs::read_to_string(&page).unwrap();
        for directive in text.split("{{#include ").skip(1) {
            let target = directive.split("}}").next().unwrap().trim();
            includes += 1;
            let (file, anchor) = match target.split_once(':') {
                Some((file, anchor)) if !anchor.starts_with(|c: char| c.is_ascii_digit()) => {
                    (file, Some(anchor))
                }
                Some((file, _lines)) => (file, None),
                None => (target, None),
            };
            let path = page.parent().unwrap().join(file);
            let Ok(content) = std::fs::read_to_string(&path) else {
                problems.push(format!("{}: {file} does not exist", page.display()));
                continue;
            };
            if let Some(anchor) = anchor {
                let start = content
                    .lines()
                    .any(|line| line.trim_end().ends_with(&format!("ANCHOR: {anchor}")));
                let end = content
                    .lines()
                    .any(|line| line.trim_end().ends_with(&format!("ANCHOR_END: {anchor}")));
                if !(start && end) {
                    problems.push(format!("{}: {file} has no anchor `{anchor}`", page.display()));
                }
            }
        }
    }
    assert!(includes > 0, "the book includes its code from files");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
