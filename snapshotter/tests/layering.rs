//! The daemon's module layering (DESIGN.md "Layout"): data flows containerd → snapshot →
//! layer → fs → storage → the swarm (p2p) or the task's origin, and no module imports one
//! above it; `handoff` (keeping FUSE connections across restarts) sits between layer and fs. Read from the source: every `crate::<module>` a top-level module's non-test code
//! names must be allowed below, and the graph has no cycle. `layer` and `p2p` meet only
//! through `dragonfly-task` (`TaskOpener`), never each other.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// What each top-level module may import from the crate.
const ALLOWED: &[(&str, &[&str])] = &[
    ("config", &[]),
    ("setup", &[]),
    ("metrics", &[]),
    ("snapshot", &["metrics"]),
    ("fs", &["metrics", "config"]),
    ("handoff", &["fs", "snapshot", "config"]),
    ("layer", &["snapshot", "handoff", "fs", "metrics", "config"]),
    ("p2p", &["metrics", "config"]),
    ("api", &["p2p", "metrics", "config"]),
    (
        "daemon",
        &[
            "api", "config", "handoff", "layer", "metrics", "p2p", "snapshot",
        ],
    ),
];

/// Non-test source of a file: everything before a `#[cfg(test)]` item, none of a tests file.
fn production_source(path: &Path) -> String {
    let name = path.file_name().unwrap().to_string_lossy();
    if name == "tests.rs" || name.ends_with("_tests.rs") {
        return String::new();
    }
    let text = std::fs::read_to_string(path).unwrap();
    match text.find("#[cfg(test)]") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

fn module_of(src: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_owned()
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Module → the crate modules its production code names.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let re = regex::Regex::new(r"crate::([a-z0-9_]+)").unwrap();
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let module = module_of(&src, &f);
        if module == "lib" || module == "main" {
            continue;
        }
        let deps = graph.entry(module.clone()).or_default();
        for c in re.captures_iter(&production_source(&f)) {
            if c[1] != module {
                deps.insert(c[1].to_owned());
            }
        }
    }
    graph
}

#[test]
fn no_module_imports_one_above_it() {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let graph = imports();
    for (module, deps) in &graph {
        let ok = allowed
            .get(module.as_str())
            .unwrap_or_else(|| panic!("module {module} is not in the layering table; add it"));
        for d in deps {
            assert!(
                ok.contains(&d.as_str()),
                "{module} imports crate::{d}, which is not below it (allowed: {ok:?})"
            );
        }
    }
    assert!(
        graph.contains_key("layer") && graph.contains_key("p2p"),
        "{graph:?}"
    );
}

#[test]
fn the_module_graph_has_no_cycle() {
    let graph = imports();
    // Kahn: repeatedly remove modules that import nothing left.
    let mut left = graph.clone();
    while !left.is_empty() {
        let leaf = left
            .iter()
            .find(|(_, deps)| deps.iter().all(|d| !left.contains_key(d)))
            .map(|(m, _)| m.clone());
        let Some(leaf) = leaf else {
            panic!("import cycle among {:?}", left.keys().collect::<Vec<_>>());
        };
        left.remove(&leaf);
    }
}
