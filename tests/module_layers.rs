//! The import graph of `src/` is layered and acyclic (issue 13, "one home per feature, no
//! cycles"; `docs/architecture.md`, "Layers").
//!
//! Reads every file of `src/` (except the binary's `main.rs`), extracts the module paths
//! it names (`use` statements, `pub use` re-exports and paths in code: `crate::…`,
//! `super::…`, `self::…` and paths through its own child modules; comments and string
//! literals are skipped), and checks:
//!
//! - **layers**: every top-level module is in [`LAYERS`], and no module names a module of
//!   a higher layer; the graph between top-level modules has no cycle (so two modules of
//!   one layer may not import each other in a circle);
//! - **files**: the graph between files has no cycle. A path is resolved to the file that
//!   defines the item, following a module's `pub use` re-exports, so `crate::vault::Vault`
//!   points at `vault/mod.rs` and `crate::vault::GrantRecord` at `vault/record.rs`. A
//!   module's root file (`mod.rs`) is its facade and assembly point: what it takes from
//!   its own files (declarations, re-exports, calls) is not an edge; what they take from
//!   it (its shared types, e.g. the module's error enum) is. So two files of one module
//!   (`tokens/source.rs`, `tokens/cache.rs`) may not import each other, directly or
//!   through other files.
//!
//! The analysis is a small tokenizer, not a Rust parser: it knows `use` trees, inline
//! `mod x { … }` blocks, raw strings, char literals and lifetimes, and nothing of macros
//! (a path built inside `macro_rules!` is still read as written).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level modules of the library, lowest layer first. A module may name modules of its
/// own layer or lower ones, never a higher one. Every module in `src/` must be listed.
const LAYERS: &[&[&str]] = &[
    // Ground floor: no imports from the crate but each other's.
    &["secret", "clock", "metrics", "store", "http_client"],
    // Pure protocol engine (frames, envelopes, discovery and handshake parsing).
    &["protocol"],
    // Typed configuration.
    &["config"],
    // Storage and sealing, the OpenAPI client, the token-endpoint pacer, the connection.
    &["vault", "openapi", "token_endpoint", "connection"],
    // get_token (source, cache, refresher, TokenService); the event log consumer; event
    // dedup and fan-out to subscribers (the event gateway grows from it).
    &["tokens", "event_log", "events"],
    // The refresh scheduler; authorization sessions; the OpenAPI proxy's forwarder.
    &["refresh", "session", "proxy"],
    // The HTTP front (control API, health, metrics, OAuth callback).
    &["http"],
    // The whole tree (LarkAuth::start, Handle); the control API client.
    &["app", "client"],
    // Running the service until a signal; the CLI's client subcommands; `top`'s live view.
    &["service", "cli", "top"],
    // The in-process fake platform (feature `sandbox`).
    &["sandbox"],
    // The self-contained demo on the sandbox (feature `sandbox`).
    &["demo"],
];

// ----- tokens ---------------------------------------------------------------------------

/// Identifiers and punctuation of a source file, without comments, strings and chars.
fn tokenize(src: &str) -> Vec<String> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let n = chars.len();
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    while i < n {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c.is_whitespace() {
            i += 1;
        } else if c == '/' && next == Some('/') {
            while i < n && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < n {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if (c == 'r' || c == 'b') && raw_string_start(&chars, i).is_some() {
            let (hashes, body) = raw_string_start(&chars, i).expect("checked");
            i = body;
            loop {
                if i >= n {
                    break;
                }
                if chars[i] == '"' && (0..hashes).all(|k| chars.get(i + 1 + k) == Some(&'#')) {
                    i += 1 + hashes;
                    break;
                }
                i += 1;
            }
        } else if c == '"' || (c == 'b' && next == Some('"')) {
            i += if c == 'b' { 2 } else { 1 };
            while i < n && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
        } else if c == '\'' || (c == 'b' && next == Some('\'')) {
            let start = if c == 'b' { i + 1 } else { i };
            // A char literal ('x', '\n', '\u{..}'), else a lifetime ('a).
            if chars.get(start + 1) == Some(&'\\') {
                i = start + 3;
                while i < n && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if chars.get(start + 2) == Some(&'\'') {
                i = start + 3;
            } else {
                i = start + 1;
                while i < n && is_ident(chars[i]) {
                    i += 1;
                }
            }
        } else if is_ident(c) {
            let start = i;
            while i < n && is_ident(chars[i]) {
                i += 1;
            }
            out.push(chars[start..i].iter().collect());
        } else if c == ':' && next == Some(':') {
            out.push("::".into());
            i += 2;
        } else {
            out.push(c.to_string());
            i += 1;
        }
    }
    out
}

/// At `r"`, `r#"`, `br"`, `br#"`: the number of `#` and the index after the opening quote.
fn raw_string_start(chars: &[char], i: usize) -> Option<(usize, usize)> {
    let mut j = i;
    if chars[j] == 'b' {
        j += 1;
    }
    if chars.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let mut hashes = 0;
    while chars.get(j) == Some(&'#') {
        hashes += 1;
        j += 1;
    }
    (chars.get(j) == Some(&'"')).then_some((hashes, j + 1))
}

fn is_ident_token(t: &str) -> bool {
    t.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
}

// ----- references -------------------------------------------------------------------------

/// One path a file names, as written, in the module it is written in.
#[derive(Debug, Clone)]
struct Reference {
    /// The module the path is written in (the file's module plus inline `mod` blocks).
    scope: Vec<String>,
    /// The path's segments (`*` last for a glob).
    path: Vec<String>,
    /// The name it is re-exported under, when it is a `pub use`.
    reexport_as: Option<String>,
}

/// Parses one use tree starting at `tokens[i]`, pushing (path, name) pairs; returns the
/// index after the tree.
fn use_tree(
    tokens: &[String],
    mut i: usize,
    prefix: Vec<String>,
    out: &mut Vec<(Vec<String>, String)>,
) -> usize {
    let mut path = prefix;
    if tokens.get(i).map(String::as_str) == Some("::") {
        i += 1;
    }
    loop {
        match tokens.get(i).map(String::as_str) {
            Some("{") => {
                i += 1;
                loop {
                    match tokens.get(i).map(String::as_str) {
                        Some("}") => return i + 1,
                        Some(",") => i += 1,
                        None => return i,
                        _ => i = use_tree(tokens, i, path.clone(), out),
                    }
                }
            }
            Some("*") => {
                path.push("*".into());
                out.push((path, "*".into()));
                return i + 1;
            }
            Some(t) if is_ident_token(t) => {
                path.push(t.to_string());
                i += 1;
                match tokens.get(i).map(String::as_str) {
                    Some("::") => i += 1,
                    Some("as") => {
                        let alias = tokens.get(i + 1).cloned().unwrap_or_default();
                        if path.last().map(String::as_str) == Some("self") {
                            path.pop();
                        }
                        out.push((path, alias));
                        return i + 2;
                    }
                    _ => {
                        if path.last().map(String::as_str) == Some("self") {
                            path.pop();
                        }
                        let name = path.last().cloned().unwrap_or_default();
                        out.push((path, name));
                        return i;
                    }
                }
            }
            _ => return i + 1,
        }
    }
}

/// Every path `tokens` names, with the inline modules they are written in, and the child
/// modules declared (by scope).
fn references(module: &[String], tokens: &[String]) -> (Vec<Reference>, BTreeSet<Vec<String>>) {
    let mut refs = Vec::new();
    let mut children = BTreeSet::new();
    // (brace depth at which the inline module's block opened, its name)
    let mut inline: Vec<(usize, String)> = Vec::new();
    let mut depth = 0usize;
    let scope_of = |inline: &[(usize, String)]| {
        let mut s = module.to_vec();
        s.extend(inline.iter().map(|(_, n)| n.clone()));
        s
    };
    let mut i = 0;
    while i < tokens.len() {
        let t = tokens[i].as_str();
        match t {
            "{" => depth += 1,
            "}" => {
                if inline.last().is_some_and(|(d, _)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            "mod" if tokens.get(i + 1).is_some_and(|n| is_ident_token(n)) => {
                let name = tokens[i + 1].clone();
                let mut child = scope_of(&inline);
                child.push(name.clone());
                children.insert(child);
                if tokens.get(i + 2).map(String::as_str) == Some("{") {
                    depth += 1;
                    inline.push((depth, name));
                    i += 3;
                    continue;
                }
            }
            "use" => {
                let public = i > 0
                    && (tokens[i - 1] == "pub"
                        || (tokens[i - 1] == ")"
                            && tokens[..i].iter().rev().nth(3).is_some_and(|t| t == "pub")));
                let mut found = Vec::new();
                let end = use_tree(tokens, i + 1, Vec::new(), &mut found);
                let scope = scope_of(&inline);
                for (path, name) in found {
                    refs.push(Reference {
                        scope: scope.clone(),
                        path,
                        reexport_as: public.then_some(name),
                    });
                }
                i = end;
                continue;
            }
            _ if is_ident_token(t)
                && tokens.get(i + 1).map(String::as_str) == Some("::")
                && (i == 0 || tokens[i - 1] != "::") =>
            {
                let mut path = vec![t.to_string()];
                let mut j = i + 1;
                while tokens.get(j).map(String::as_str) == Some("::")
                    && tokens.get(j + 1).is_some_and(|s| is_ident_token(s))
                {
                    path.push(tokens[j + 1].clone());
                    j += 2;
                }
                refs.push(Reference {
                    scope: scope_of(&inline),
                    path,
                    reexport_as: None,
                });
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    (refs, children)
}

// ----- the crate ---------------------------------------------------------------------------

/// The library's files: module path → (file name relative to `src/`, its references).
struct Crate {
    files: BTreeMap<Vec<String>, (String, Vec<Reference>)>,
    /// Every module path declared with `mod` (file and inline modules).
    modules: BTreeSet<Vec<String>>,
}

impl Crate {
    /// `sources`: file names relative to `src/` (`vault/mod.rs`) with their text.
    fn new(sources: &BTreeMap<String, String>) -> Crate {
        let mut files = BTreeMap::new();
        let mut modules = BTreeSet::new();
        for (name, text) in sources {
            let module = module_of(name);
            let (refs, children) = references(&module, &tokenize(text));
            modules.insert(module.clone());
            modules.extend(children);
            files.insert(module, (name.clone(), refs));
        }
        Crate { files, modules }
    }

    /// The absolute path `reference` names, or `None` for paths outside the crate (other
    /// crates, local items, generics).
    fn absolute(&self, reference: &Reference) -> Option<Vec<String>> {
        let path = &reference.path;
        let mut base = reference.scope.clone();
        let mut rest = &path[..];
        match path.first().map(String::as_str) {
            Some("crate") => {
                base.clear();
                rest = &path[1..];
            }
            Some("self") => rest = &path[1..],
            Some("super") => {
                while rest.first().map(String::as_str) == Some("super") {
                    base.pop()?;
                    rest = &rest[1..];
                }
                if rest.first().map(String::as_str) == Some("self") {
                    rest = &rest[1..];
                }
            }
            Some(first) => {
                let mut child = base.clone();
                child.push(first.to_string());
                if !self.modules.contains(&child) {
                    return None;
                }
            }
            None => return None,
        }
        base.extend(rest.iter().cloned());
        Some(base)
    }

    /// The file module holding `path`'s longest module prefix, and the rest of the path.
    fn split<'p>(&self, path: &'p [String]) -> (Vec<String>, &'p [String]) {
        for k in (0..=path.len()).rev() {
            if self.files.contains_key(&path[..k]) {
                return (path[..k].to_vec(), &path[k..]);
            }
        }
        (Vec::new(), path)
    }

    /// The file module that defines what `path` names, following `pub use` re-exports.
    fn defining_file(&self, path: &[String], hops: usize) -> Vec<String> {
        let (file, rest) = self.split(path);
        let Some(name) = rest.first() else {
            return file;
        };
        if hops > 16 {
            return file;
        }
        let (_, refs) = &self.files[&file];
        for r in refs {
            if r.scope != file || r.reexport_as.as_deref() != Some(name.as_str()) {
                continue;
            }
            if let Some(target) = self.absolute(r) {
                let mut full = target;
                full.extend(rest[1..].iter().cloned());
                return self.defining_file(&full, hops + 1);
            }
        }
        file
    }

    /// Edges between files: (from, to) module paths, with a line naming the path, for
    /// the file graph; and every (from top-level module, to top-level module, path) for
    /// the layers.
    #[allow(clippy::type_complexity)]
    fn edges(
        &self,
    ) -> (
        BTreeMap<Vec<String>, BTreeMap<Vec<String>, String>>,
        Vec<(String, String, String)>,
    ) {
        let mut files: BTreeMap<Vec<String>, BTreeMap<Vec<String>, String>> = BTreeMap::new();
        let mut tops = Vec::new();
        for (module, (name, refs)) in &self.files {
            if module.is_empty() {
                continue; // lib.rs: module declarations and the public re-exports
            }
            for r in refs {
                let Some(target) = self.absolute(r) else {
                    continue;
                };
                let Some(target_top) = target.first() else {
                    continue;
                };
                let written = format!("{name}: {}", r.path.join("::"));
                // A re-export through lib.rs (`crate::Config`) names config.
                let defining = self.defining_file(&target, 0);
                let top = defining.first().unwrap_or(target_top);
                if *top != module[0] {
                    tops.push((module[0].clone(), top.clone(), written.clone()));
                }
                // A module's root file declares, re-exports and assembles its own files:
                // its uses of them are not edges (theirs of it are).
                let own_subtree = defining.starts_with(module);
                if !own_subtree && !defining.is_empty() {
                    files
                        .entry(module.clone())
                        .or_default()
                        .entry(defining)
                        .or_insert(written);
                }
            }
        }
        (files, tops)
    }
}

/// `vault/mod.rs` → `["vault"]`, `vault/seal.rs` → `["vault", "seal"]`, `lib.rs` → `[]`.
fn module_of(file: &str) -> Vec<String> {
    let file = file.strip_suffix(".rs").expect("a .rs file");
    let mut parts: Vec<String> = file.split('/').map(String::from).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// The first cycle of `graph`, as a list of nodes (first = last), if any.
fn find_cycle<N: Ord + Clone>(graph: &BTreeMap<N, BTreeSet<N>>) -> Option<Vec<N>> {
    fn visit<N: Ord + Clone>(
        node: &N,
        graph: &BTreeMap<N, BTreeSet<N>>,
        done: &mut BTreeSet<N>,
        stack: &mut Vec<N>,
    ) -> Option<Vec<N>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.clone());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, done, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.clone());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, graph, &mut done, &mut Vec::new()) {
            return Some(cycle);
        }
    }
    None
}

/// Every rule the layers break in `sources` (empty: none).
fn violations(sources: &BTreeMap<String, String>) -> Vec<String> {
    let krate = Crate::new(sources);
    let layer_of = |m: &str| LAYERS.iter().position(|l| l.contains(&m));
    let mut problems = Vec::new();

    let tops: BTreeSet<&str> = krate
        .files
        .keys()
        .filter_map(|m| m.first().map(String::as_str))
        .collect();
    for top in &tops {
        if layer_of(top).is_none() {
            problems.push(format!(
                "module `{top}` is in no layer: add it to LAYERS (tests/module_layers.rs) and \
                 to docs/architecture.md, \"Layers\""
            ));
        }
    }

    let (files, top_edges) = krate.edges();
    let mut module_graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut upward = BTreeSet::new();
    for (from, to, written) in &top_edges {
        if let (Some(lf), Some(lt)) = (layer_of(from), layer_of(to))
            && lt > lf
            && upward.insert(written)
        {
            problems.push(format!(
                "upward import: `{from}` (layer {lf}) names `{to}` (layer {lt}) in {written}"
            ));
        }
        module_graph
            .entry(from.clone())
            .or_default()
            .insert(to.clone());
    }
    if let Some(cycle) = find_cycle(&module_graph) {
        problems.push(format!("modules import each other: {}", cycle.join(" → ")));
    }

    let mut file_graph: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = files
        .iter()
        .map(|(from, tos)| (from.clone(), tos.keys().cloned().collect()))
        .collect();
    // Up to ten cycles: each found one is cut at its closing edge to look for the next.
    for _ in 0..10 {
        let Some(cycle) = find_cycle(&file_graph) else {
            break;
        };
        let steps: Vec<String> = cycle
            .windows(2)
            .map(|w| files[&w[0]][&w[1]].clone())
            .collect();
        problems.push(format!("files import each other: {}", steps.join(" → ")));
        let n = cycle.len();
        if let Some(tos) = file_graph.get_mut(&cycle[n - 2]) {
            tos.remove(&cycle[n - 1]);
        }
    }
    problems
}

fn read_src(dir: &Path, prefix: &str, out: &mut BTreeMap<String, String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read src/")
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("utf-8 name");
        if path.is_dir() {
            read_src(&path, &format!("{prefix}{name}/"), out);
        } else if name.ends_with(".rs") {
            out.insert(
                format!("{prefix}{name}"),
                std::fs::read_to_string(&path).expect("read a source file"),
            );
        }
    }
}

fn library_sources() -> BTreeMap<String, String> {
    let mut sources = BTreeMap::new();
    read_src(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        "",
        &mut sources,
    );
    // The binary is its own crate: its `crate::` is not the library's.
    sources.remove("main.rs");
    sources
}

#[test]
fn src_is_layered_without_cycles() {
    let sources = library_sources();
    assert!(sources.len() > 40, "src/ not found or nearly empty");
    let problems = violations(&sources);
    assert!(
        problems.is_empty(),
        "the import graph of src/ breaks its layers:\n- {}",
        problems.join("\n- ")
    );
}

#[test]
fn every_layer_module_exists() {
    let sources = library_sources();
    for module in LAYERS.iter().flat_map(|l| l.iter()) {
        assert!(
            sources.contains_key(&format!("{module}.rs"))
                || sources.contains_key(&format!("{module}/mod.rs")),
            "LAYERS names `{module}`, which is not a module of src/"
        );
    }
}

/// The checks catch what they are for, on small made-up crates.
#[test]
fn the_checks_find_upward_imports_and_cycles() {
    let krate = |files: &[(&str, &str)]| -> BTreeMap<String, String> {
        files
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect()
    };
    let clean = krate(&[
        ("lib.rs", "pub mod secret; pub mod vault;"),
        ("secret.rs", "pub struct Secret;"),
        (
            "vault/mod.rs",
            "pub mod record; pub mod seal;\npub use self::record::Grant;\n\
             pub struct VaultError;\nfn f() { seal::open(); }",
        ),
        (
            "vault/record.rs",
            "use crate::secret::Secret; use super::seal::{self, Key};\n\
             pub struct Grant;\n// use crate::app::Nothing; (a comment)\n\
             const S: &str = \"crate::app::Nothing\";",
        ),
        ("vault/seal.rs", "pub struct Key; pub fn open() {}"),
    ]);
    assert_eq!(violations(&clean), Vec::<String>::new());

    // An upward import, written as a path in code.
    let mut upward = clean.clone();
    upward.insert(
        "secret.rs".into(),
        "pub struct Secret;\nfn f() { let _ = crate::vault::Grant; }".into(),
    );
    let problems = violations(&upward);
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("upward import: `secret`")),
        "{problems:?}"
    );

    // A cycle between files of one module, through a use tree and the facade.
    let mut cycle = clean.clone();
    cycle.insert(
        "vault/seal.rs".into(),
        "use super::{Grant as G};\npub struct Key; pub fn open() {}".into(),
    );
    let problems = violations(&cycle);
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("files import each other")
                && p.contains("vault/seal.rs")
                && p.contains("vault/record.rs")),
        "{problems:?}"
    );

    // A module missing from LAYERS.
    let mut unknown = clean;
    unknown.insert("lib.rs".into(), "pub mod gadget;".into());
    unknown.insert("gadget.rs".into(), "use crate::vault::Grant;".into());
    let problems = violations(&unknown);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("`gadget` is in no layer")),
        "{problems:?}"
    );
}
