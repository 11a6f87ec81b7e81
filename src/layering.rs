//! The layering ARCHITECTURE.md promises, checked against the source:
//! the modules depend on each other without a circle, the pure core
//! reaches for no network, database, clock or environment, and mail-auth
//! and SQL each stay in the modules that own them.
//!
//! The source is read as text (comments and unit tests left out), so a
//! new `use` that breaks a rule fails here before review has to find it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// ARCHITECTURE.md, whose code map these tests hold to the tree.
fn architecture() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("ARCHITECTURE.md")).unwrap()
}

/// The files a part of the code map names: rows whose first cell is a
/// `src/…` path, between the part's bold heading and the next.
fn code_map(part: Option<&str>) -> BTreeSet<String> {
    let text = architecture();
    let mut inside = part.is_none();
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("**") {
            inside = part.is_none_or(|p| rest.starts_with(p));
        }
        let Some(cell) = line.strip_prefix("| `") else {
            continue;
        };
        if inside {
            out.extend(
                cell.split(['`', ','])
                    .take_while(|c| !c.contains('|'))
                    .map(str::trim)
                    .filter(|c| c.starts_with("src/") && c.ends_with(".rs"))
                    .map(String::from),
            );
        }
    }
    out
}

/// The modules of ARCHITECTURE.md's pure core (`text`, `message`, …).
fn pure_core() -> BTreeSet<String> {
    let pure: BTreeSet<String> = code_map(Some("Pure core"))
        .iter()
        .map(|f| {
            f.trim_start_matches("src/")
                .trim_end_matches(".rs")
                .to_string()
        })
        .collect();
    assert!(pure.len() > 10, "ARCHITECTURE.md's pure core was not found");
    pure
}

/// What the pure core must not name: network, database, files, the
/// environment, the clock and the runtime.
const IMPURE: &[&str] = &[
    "tokio",
    "TcpStream",
    "TcpListener",
    "UdpSocket",
    "ToSocketAddrs",
    "std::fs",
    "std::env",
    "rusqlite",
    "SystemTime",
    "Instant::now",
    "now_utc",
    "now_local",
    "crate::clock::Clock",
];

/// Every module of the library: its path (`cmd::cases`) and its source,
/// with comments and the `#[cfg(test)] mod tests` block removed.
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&root, &mut files);
    let mut out = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&root).unwrap().with_extension("");
        let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into()).collect();
        if parts.last().is_some_and(|p| p == "mod") {
            parts.pop();
        }
        let name = parts.join("::");
        if matches!(name.as_str(), "lib" | "main" | "layering") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
        let code: String = code
            .lines()
            .map(|l| l.find("//").map_or(l, |i| &l[..i]))
            .collect::<Vec<_>>()
            .join("\n");
        out.insert(name, code);
    }
    out
}

/// The modules each module names: `crate::x`, `crate::x::y`, a sibling
/// as `super::y`, and a wing's root naming its files. A file's use of its
/// own wing's root (`super::Board`) is no edge: a wing (`cmd/`, `web/`,
/// `metrics/`) is one unit whose root routes to its files and holds what
/// they share.
fn dependencies(modules: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut deps = BTreeMap::new();
    for (name, code) in modules {
        let mut found = BTreeSet::new();
        let parent = name.rsplit_once("::").map(|(p, _)| p);
        let roots = [("crate::", Some("")), ("super::", parent)];
        for (prefix, base) in roots.into_iter().filter_map(|(p, b)| Some((p, b?))) {
            for (i, _) in code.match_indices(prefix) {
                let path = path_segments(&code[i + prefix.len()..]);
                let within = |n: usize| {
                    let tail = path.get(..n)?.join("::");
                    let m = if base.is_empty() {
                        tail
                    } else {
                        format!("{base}::{tail}")
                    };
                    modules.contains_key(&m).then_some(m)
                };
                // The deepest module the path names; none for `super::Item`
                // (the wing's own root: the wing is one unit) or a
                // `crate::` item outside any module.
                if let Some(target) = within(2).or_else(|| within(1))
                    && target != *name
                {
                    found.insert(target);
                }
            }
        }
        // A wing's root naming its own files (`cases::list` in cmd/mod.rs).
        for child in modules.keys() {
            let Some(short) = child.strip_prefix(&format!("{name}::")) else {
                continue;
            };
            let named = code.match_indices(&format!("{short}::")).any(|(i, _)| {
                !code[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            });
            if named && !short.contains("::") {
                found.insert(child.clone());
            }
        }
        deps.insert(name.clone(), found);
    }
    deps
}

/// The identifiers of the path `s` starts with: `a::b::c(x)` → a, b, c.
fn path_segments(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    loop {
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if end == 0 {
            return out;
        }
        out.push(&rest[..end]);
        match rest[end..].strip_prefix("::") {
            Some(next) => rest = next,
            None => return out,
        }
    }
}

/// A circle through `graph`, if there is one.
fn circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == node) {
            let mut c = path[i..].to_vec();
            c.push(node.to_string());
            return Some(c);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

/// The graph between top-level modules (a wing's files counted as one).
fn wings(deps: &BTreeMap<String, BTreeSet<String>>) -> BTreeMap<String, BTreeSet<String>> {
    let top = |m: &str| m.split("::").next().unwrap().to_string();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, ds) in deps {
        let entry = out.entry(top(m)).or_default();
        entry.extend(ds.iter().map(|d| top(d)).filter(|d| *d != top(m)));
    }
    out
}

#[test]
fn the_modules_depend_on_each_other_without_a_circle() {
    let modules = modules();
    assert!(modules.len() > 30, "the source was not found");
    let deps = dependencies(&modules);
    // The reader sees what it must: the edges ARCHITECTURE.md names.
    assert!(deps["pipeline"].contains("store"));
    assert!(deps["web::actions"].contains("casework"));
    assert!(deps["cmd"].contains("cmd::cases"));
    assert_eq!(circle(&deps), None, "between files");
    assert_eq!(circle(&wings(&deps)), None, "between wings");
}

#[test]
fn the_reader_finds_a_circle_where_there_is_one() {
    let mut modules = modules();
    modules
        .get_mut("evidence")
        .unwrap()
        .push_str("\nuse crate::decide::Decision;\n");
    let c = circle(&dependencies(&modules)).expect("a circle");
    assert!(c.contains(&"evidence".to_string()) && c.contains(&"decide".to_string()));

    // Between wings: the board reaching back into a command, while `cmd`
    // starts the board.
    let mut modules = self::modules();
    modules
        .get_mut("web::pages")
        .unwrap()
        .push_str("\nuse crate::cmd::cases::show;\n");
    let deps = dependencies(&modules);
    assert_eq!(circle(&deps), None);
    let c = circle(&wings(&deps)).expect("a circle between wings");
    assert!(c.contains(&"web".to_string()) && c.contains(&"cmd".to_string()));
}

#[test]
fn the_code_map_names_every_file_and_no_other() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let map = code_map(None);
    for file in &map {
        assert!(
            root.join(file).is_file(),
            "ARCHITECTURE.md names {file}, which is not there"
        );
    }
    for m in modules()
        .keys()
        .map(String::as_str)
        .chain(["main", "lib", "layering"])
    {
        let path = m.replace("::", "/");
        let named = [format!("src/{path}.rs"), format!("src/{path}/mod.rs")];
        assert!(
            named.iter().any(|f| map.contains(f)),
            "ARCHITECTURE.md's code map does not name the module {m}"
        );
    }
}

#[test]
fn the_pure_core_touches_no_network_database_clock_or_environment() {
    let modules = modules();
    for m in pure_core() {
        let code = modules.get(&m).unwrap_or_else(|| panic!("no module {m}"));
        for word in IMPURE {
            assert!(!code.contains(word), "the pure module {m} names {word}");
        }
    }
}

#[test]
fn the_pure_core_depends_on_itself_config_and_the_time_format_only() {
    let deps = dependencies(&modules());
    let pure = pure_core();
    for m in &pure {
        for d in &deps[m] {
            assert!(
                pure.contains(d) || d == "config" || d == "clock",
                "the pure module {m} depends on {d}"
            );
        }
    }
    // Nor does the outgoing queue count its own sends or file messages.
    for d in ["metrics", "pipeline"] {
        assert!(!deps["outbox"].contains(d), "outbox depends on {d}");
    }
}

#[test]
fn mail_auth_and_sql_stay_where_they_belong() {
    for (m, code) in modules() {
        if !matches!(m.as_str(), "authenticate" | "signer") {
            assert!(!code.contains("mail_auth"), "{m} names mail-auth");
        }
        if m != "store" {
            assert!(!code.contains("rusqlite"), "{m} names rusqlite");
            let sql = code.lines().find(|l| {
                ["INSERT INTO", "DELETE FROM", "CREATE TABLE"]
                    .iter()
                    .any(|w| l.contains(w))
                    || (l.contains("SELECT ") && l.contains(" FROM "))
                    || (l.contains("UPDATE ") && l.contains(" SET "))
            });
            assert_eq!(sql, None, "{m} holds SQL");
        }
    }
}
