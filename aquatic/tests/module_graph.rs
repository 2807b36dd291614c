//! The modules of the `aquatic` library must not import each other in a
//! cycle: the layering in `src/lib.rs` (`net -> routing -> swarm -> ...`) is
//! meant to point one way, and nothing in the compiler enforces it.
//!
//! Each `.rs` file under `src/` is a module (`lib.rs` is `crate`, `foo.rs`
//! and `foo/mod.rs` are `foo`, `foo/bar.rs` is `foo::bar`; `main.rs` and
//! `bin/` are binaries and skipped). An edge goes from a module to every
//! module it names through a path: `crate::...`, `super::...`, `self::...`,
//! a child module (`pub use child::Thing`) or a name an earlier `use` bound
//! to a crate path. A path is resolved to its longest prefix that is a module
//! file, so `crate::swarm::BtShard` is an edge to `swarm`. Comments, string
//! literals and `#[cfg(test)]` items are not looked at: test code may reach
//! anywhere.
//!
//! `cargo test -p aquatic --test module_graph -- --nocapture` prints the
//! graph.
//!
//! Limits: this reads tokens, not the compiler's name resolution. A glob
//! `use crate::x::*` is an edge to `x` (and what it brings in is not
//! followed); paths a macro builds from pieces, `#[path]`, `include!` and
//! `#[cfg(any(test, ...))]` are not understood; a name bound by `use` counts
//! for the whole file, whatever block the `use` is in; every `.rs` file under
//! `src/` is taken for a module, declared or not.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    fs, io,
    path::Path,
};

/// A module below the crate root: `[]` is `crate`, `["net", "udp"]` is `net::udp`.
type ModPath = Vec<String>;

/// from -> to -> the references that make the edge, in source order.
type Graph = BTreeMap<ModPath, BTreeMap<ModPath, Vec<Site>>>;

fn name(module: &[String]) -> String {
    if module.is_empty() {
        "crate".to_string()
    } else {
        module.join("::")
    }
}

/// One library source file.
struct SourceFile {
    /// `src/net/udp.rs`.
    label: String,
    module: ModPath,
    text: String,
}

/// One reference: where it is and the path as written.
#[derive(Clone, Debug)]
struct Site {
    file: String,
    line: usize,
    path: String,
}

// ---------------------------------------------------------------- files

/// The module a file under `src/` is, from its path relative to `src/`
/// (`/`-separated); None for the binaries.
fn module_of(relative: &str) -> Option<ModPath> {
    let stem = relative.strip_suffix(".rs")?;
    let mut parts: ModPath = stem.split('/').map(str::to_string).collect();
    match parts.as_slice() {
        [only] if only == "main" => return None,
        [only] if only == "lib" => return Some(Vec::new()),
        [dir, _, ..] if dir == "bin" => return None,
        _ => {}
    }
    if parts.last().is_some_and(|last| last == "mod") {
        parts.pop();
    }
    Some(parts)
}

fn read_library(src: &Path) -> io::Result<Vec<SourceFile>> {
    let mut relatives = Vec::new();
    collect_rs_files(src, "", &mut relatives)?;
    relatives.sort();
    let mut files = Vec::new();
    for relative in relatives {
        let Some(module) = module_of(&relative) else {
            continue;
        };
        let text = fs::read_to_string(src.join(&relative))?;
        files.push(SourceFile {
            label: format!("src/{relative}"),
            module,
            text,
        });
    }
    Ok(files)
}

fn collect_rs_files(dir: &Path, prefix: &str, out: &mut Vec<String>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let relative = format!("{prefix}{file_name}");
        if entry.file_type()?.is_dir() {
            collect_rs_files(&entry.path(), &format!("{relative}/"), out)?;
        } else if file_name.ends_with(".rs") {
            out.push(relative);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- lexer

/// Just enough of Rust's tokens to find paths: comments vanish, every
/// literal (string, raw string, char, number) and lifetime is one opaque
/// token.
#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    /// `::`
    PathSep,
    Punct(char),
    Literal,
}

#[derive(Clone, Debug)]
struct Token {
    tok: Tok,
    line: usize,
}

fn is_ident_start(ch: char) -> bool {
    ch == '_' || ch.is_alphabetic()
}

fn is_ident_char(ch: char) -> bool {
    ch == '_' || ch.is_alphanumeric()
}

fn lex(source: &str) -> Vec<Token> {
    let c: Vec<char> = source.chars().collect();
    let at = |k: usize| c.get(k).copied().unwrap_or('\0');
    let mut tokens = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        let start_line = line;
        let tok = if ch == '\n' {
            line += 1;
            i += 1;
            continue;
        } else if ch.is_whitespace() {
            i += 1;
            continue;
        } else if ch == '/' && at(i + 1) == '/' {
            // `//`, `///`, `//!`
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
            continue;
        } else if ch == '/' && at(i + 1) == '*' {
            // Block comments nest.
            let mut depth = 0usize;
            while i < c.len() {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if c[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
            continue;
        } else if ch == '"' {
            i = skip_quoted(&c, i + 1, &mut line);
            Tok::Literal
        } else if ch == '\'' {
            if at(i + 1) == '\\' {
                // '\n', '\'', '\u{..}'
                i += 3;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                // 'x', '"'
                i += 3;
            } else {
                // a lifetime or a loop label
                i += 1;
                while is_ident_char(at(i)) {
                    i += 1;
                }
            }
            Tok::Literal
        } else if is_ident_start(ch) {
            let start = i;
            while is_ident_char(at(i)) {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            match (word.as_str(), at(i)) {
                ("b" | "c", '"') => {
                    i = skip_quoted(&c, i + 1, &mut line);
                    Tok::Literal
                }
                ("b", '\'') => {
                    i += 1;
                    if at(i) == '\\' {
                        i += 2;
                    }
                    while i < c.len() && c[i] != '\'' {
                        i += 1;
                    }
                    i += 1;
                    Tok::Literal
                }
                ("r" | "br" | "cr", '"' | '#') => {
                    let mut j = i;
                    while at(j) == '#' {
                        j += 1;
                    }
                    let hashes = j - i;
                    if at(j) == '"' {
                        i = skip_raw(&c, j + 1, hashes, &mut line);
                        Tok::Literal
                    } else if word == "r" && hashes == 1 && is_ident_start(at(j)) {
                        // r#ident
                        let start = j;
                        while is_ident_char(at(j)) {
                            j += 1;
                        }
                        i = j;
                        Tok::Ident(c[start..j].iter().collect())
                    } else {
                        Tok::Ident(word)
                    }
                }
                _ => Tok::Ident(word),
            }
        } else if ch.is_ascii_digit() {
            while is_ident_char(at(i)) {
                i += 1;
            }
            Tok::Literal
        } else if ch == ':' && at(i + 1) == ':' {
            i += 2;
            Tok::PathSep
        } else if ch == '$' && is_ident_start(at(i + 1)) {
            // `$crate` in a macro is this crate; other `$name`s are
            // fragments that must not look like module names.
            let start = i + 1;
            i += 1;
            while is_ident_char(at(i)) {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            if word == "crate" {
                Tok::Ident(word)
            } else {
                Tok::Ident(format!("${word}"))
            }
        } else {
            i += 1;
            Tok::Punct(ch)
        };
        tokens.push(Token {
            tok,
            line: start_line,
        });
    }
    tokens
}

/// Past the closing `"` of a string whose body starts at `i`.
fn skip_quoted(c: &[char], mut i: usize, line: &mut usize) -> usize {
    while i < c.len() {
        match c[i] {
            '\\' => {
                if c.get(i + 1) == Some(&'\n') {
                    *line += 1;
                }
                i += 2;
            }
            '"' => return i + 1,
            '\n' => {
                *line += 1;
                i += 1;
            }
            _ => i += 1,
        }
    }
    c.len()
}

/// Past the closing `"#...#` of a raw string whose body starts at `i`.
fn skip_raw(c: &[char], mut i: usize, hashes: usize, line: &mut usize) -> usize {
    while i < c.len() {
        if c[i] == '"' && (1..=hashes).all(|k| c.get(i + k) == Some(&'#')) {
            return i + 1 + hashes;
        }
        if c[i] == '\n' {
            *line += 1;
        }
        i += 1;
    }
    c.len()
}

/// Whether the tokens from `i` are `pattern`: `"::"` is a path separator,
/// a single non-alphanumeric character is punctuation, the rest identifiers.
fn seq(t: &[Token], i: usize, pattern: &[&str]) -> bool {
    pattern.iter().enumerate().all(|(k, want)| {
        let Some(token) = t.get(i + k) else {
            return false;
        };
        let mut chars = want.chars();
        match (&token.tok, chars.next(), chars.next()) {
            (Tok::PathSep, _, _) => *want == "::",
            (Tok::Punct(p), Some(ch), None) => *p == ch,
            (Tok::Ident(word), _, _) => word == want,
            _ => false,
        }
    })
}

fn ident(t: &[Token], i: usize) -> Option<&str> {
    match &t.get(i)?.tok {
        Tok::Ident(word) => Some(word),
        _ => None,
    }
}

/// Past the bracket that closes the one at `open`.
fn after_group(t: &[Token], open: usize) -> usize {
    let mut depth = 0usize;
    for (k, token) in t.iter().enumerate().skip(open) {
        match token.tok {
            Tok::Punct('(' | '[' | '{') => depth += 1,
            Tok::Punct(')' | ']' | '}') => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return k + 1;
                }
            }
            _ => {}
        }
    }
    t.len()
}

// ---------------------------------------------------------------- test code

/// A file's tokens without its `#[cfg(test)]` items.
struct Stripped {
    tokens: Vec<Token>,
    /// `#[cfg(test)] mod name;`: child modules that exist only for tests.
    test_modules: Vec<String>,
    /// `#![cfg(test)]`: the whole file exists only for tests.
    whole_file: bool,
}

fn strip_test_code(t: &[Token]) -> Stripped {
    let mut stripped = Stripped {
        tokens: Vec::new(),
        test_modules: Vec::new(),
        whole_file: false,
    };
    let mut i = 0;
    while i < t.len() {
        if seq(t, i, &["#", "!", "[", "cfg", "(", "test", ")", "]"]) {
            stripped.whole_file = true;
            i += 8;
            continue;
        }
        if seq(t, i, &["#", "[", "cfg", "(", "test", ")", "]"]) {
            let mut start = i + 7;
            while seq(t, start, &["#", "["]) {
                start = after_group(t, start + 1);
            }
            let mut keyword = start;
            if seq(t, keyword, &["pub"]) {
                keyword += 1;
                if seq(t, keyword, &["("]) {
                    keyword = after_group(t, keyword);
                }
            }
            if seq(t, keyword, &["mod"]) && seq(t, keyword + 2, &[";"]) {
                if let Some(module) = ident(t, keyword + 1) {
                    stripped.test_modules.push(module.to_string());
                }
            }
            i = item_end(t, start, keyword);
            continue;
        }
        stripped.tokens.push(t[i].clone());
        i += 1;
    }
    stripped
}

/// Where the item (or field, match arm, statement) that starts at `start`
/// ends; its first keyword after any visibility is at `keyword`.
fn item_end(t: &[Token], start: usize, keyword: usize) -> usize {
    let kw = ident(t, keyword).unwrap_or("");
    let next = ident(t, keyword + 1).unwrap_or("");
    // Items that end at `;` even when a `{` block comes first.
    let semicolon_item = match kw {
        "let" | "static" | "type" | "use" => true,
        "const" => !matches!(next, "fn" | "unsafe" | "async" | "extern"),
        _ => false,
    };
    let item = semicolon_item
        || matches!(
            kw,
            "fn" | "mod"
                | "impl"
                | "struct"
                | "enum"
                | "trait"
                | "union"
                | "extern"
                | "unsafe"
                | "async"
                | "const"
                | "macro_rules"
        );
    let mut depth = 0usize;
    for (k, token) in t.iter().enumerate().skip(start) {
        match token.tok {
            Tok::Punct('(' | '[' | '{') => depth += 1,
            Tok::Punct(closer @ (')' | ']' | '}')) => {
                if depth == 0 {
                    // The end of the enclosing block: not ours.
                    return k;
                }
                depth -= 1;
                if depth == 0 && closer == '}' && !semicolon_item {
                    return k + 1;
                }
            }
            Tok::Punct(';') if depth == 0 => return k + 1,
            Tok::Punct(',') if depth == 0 && !item => return k + 1,
            _ => {}
        }
    }
    t.len()
}

// ---------------------------------------------------------------- paths

/// One leaf of a `use` tree, written out in full.
struct UsePath {
    segments: Vec<String>,
    glob: bool,
    /// The name it brings into scope.
    binding: Option<String>,
    line: usize,
}

/// The `use` tree starting at `i` (just past `use`): its leaves and the
/// index past its `;`. None when it is not a tree this parser knows.
fn parse_use(t: &[Token], i: usize) -> Option<(Vec<UsePath>, usize)> {
    let mut i = i;
    let mut leaves = Vec::new();
    parse_tree(t, &mut i, &[], &mut leaves)?;
    if !seq(t, i, &[";"]) {
        return None;
    }
    Some((leaves, i + 1))
}

fn parse_tree(t: &[Token], i: &mut usize, prefix: &[String], out: &mut Vec<UsePath>) -> Option<()> {
    let token = t.get(*i)?;
    match &token.tok {
        Tok::Punct('{') => {
            *i += 1;
            loop {
                if seq(t, *i, &["}"]) {
                    *i += 1;
                    return Some(());
                }
                parse_tree(t, i, prefix, out)?;
                if seq(t, *i, &[","]) {
                    *i += 1;
                } else if !seq(t, *i, &["}"]) {
                    return None;
                }
            }
        }
        Tok::Punct('*') => {
            out.push(UsePath {
                segments: prefix.to_vec(),
                glob: true,
                binding: None,
                line: token.line,
            });
            *i += 1;
            Some(())
        }
        Tok::PathSep if prefix.is_empty() => {
            // `use ::other_crate::...`: never this crate.
            *i += 1;
            parse_tree(t, i, &["::".to_string()], out)
        }
        Tok::Ident(_) => {
            let mut path = prefix.to_vec();
            loop {
                let segment = ident(t, *i)?;
                let line = t[*i].line;
                path.push(segment.to_string());
                *i += 1;
                if !seq(t, *i, &["::"]) {
                    let mut binding = path.last().cloned();
                    let renamed = seq(t, *i, &["as"]);
                    if renamed {
                        binding = ident(t, *i + 1).filter(|b| *b != "_").map(str::to_string);
                        *i += 2;
                    }
                    if path.len() > 1 && path.last().is_some_and(|s| s == "self") {
                        // `a::{self}` is `a`.
                        path.pop();
                        if !renamed {
                            binding = path.last().cloned();
                        }
                    }
                    out.push(UsePath {
                        segments: path,
                        glob: false,
                        binding,
                        line,
                    });
                    return Some(());
                }
                *i += 1;
                if seq(t, *i, &["{"]) || seq(t, *i, &["*"]) {
                    return parse_tree(t, i, &path, out);
                }
            }
        }
        _ => None,
    }
}

/// How a path found its way into the crate.
#[derive(Clone, Copy, PartialEq)]
enum Via {
    /// `crate::`, `super::`, `self::` or a child module's name.
    Path,
    /// A name a `use` bound to a crate path.
    Alias,
}

/// `segments` as a path from the crate root, written in module `logical`
/// (a file module plus any inline `mod x { }` around the reference); None
/// when it does not name something in this crate.
fn absolute(
    logical: &[String],
    segments: &[String],
    modules: &BTreeSet<ModPath>,
    aliases: &BTreeMap<String, ModPath>,
) -> Option<(ModPath, Via)> {
    let first = segments.first()?;
    let (mut base, rest, via) = match first.as_str() {
        "crate" => (Vec::new(), &segments[1..], Via::Path),
        "self" | "super" => {
            let mut base = logical.to_vec();
            let mut k = 0;
            while let Some(segment) = segments.get(k) {
                match segment.as_str() {
                    "self" => {}
                    "super" => {
                        base.pop()?;
                    }
                    _ => break,
                }
                k += 1;
            }
            (base, &segments[k..], Via::Path)
        }
        _ => {
            let mut child = logical.to_vec();
            child.push(first.clone());
            if modules.contains(&child) {
                // `pub use child::Thing`
                (logical.to_vec(), segments, Via::Path)
            } else if let Some(target) = aliases.get(first) {
                // `use crate::net;` ... `net::udp::x()`
                (target.clone(), &segments[1..], Via::Alias)
            } else {
                return None;
            }
        }
    };
    base.extend(rest.iter().cloned());
    Some((base, via))
}

fn longest_module_prefix(path: &[String], modules: &BTreeSet<ModPath>) -> Option<ModPath> {
    (0..=path.len())
        .rev()
        .map(|k| &path[..k])
        .find(|prefix| modules.contains(*prefix))
        .map(<[String]>::to_vec)
}

/// A reference found in a file: line, absolute path, path as written.
type Reference = (usize, ModPath, String);

/// The crate paths named in a file module's (test-free) tokens, and the
/// names its `use` items bind to crate paths.
fn scan(
    module: &[String],
    t: &[Token],
    modules: &BTreeSet<ModPath>,
    aliases: &BTreeMap<String, ModPath>,
) -> (Vec<Reference>, BTreeMap<String, ModPath>) {
    let mut references = Vec::new();
    let mut bound = BTreeMap::new();
    // Inline `mod name {` blocks around the cursor, with the brace depth
    // outside each.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let logical = |inline: &[(String, usize)]| -> ModPath {
        module
            .iter()
            .cloned()
            .chain(inline.iter().map(|(n, _)| n.clone()))
            .collect()
    };
    let mut i = 0;
    while i < t.len() {
        match &t[i].tok {
            Tok::Punct('{') => {
                depth += 1;
                i += 1;
            }
            Tok::Punct('}') => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                i += 1;
            }
            Tok::Ident(word) if word == "mod" => {
                // `mod x;` is a declaration, not a reference.
                match ident(t, i + 1) {
                    Some(inner) if seq(t, i + 2, &["{"]) => {
                        inline.push((inner.to_string(), depth));
                        i += 2;
                    }
                    _ => i += 1,
                }
            }
            Tok::Ident(word) if word == "use" => {
                let Some((leaves, end)) = parse_use(t, i + 1) else {
                    i += 1;
                    continue;
                };
                let here = logical(&inline);
                for leaf in leaves {
                    let Some((path, _)) = absolute(&here, &leaf.segments, modules, aliases) else {
                        continue;
                    };
                    let mut written = leaf.segments.join("::");
                    if leaf.glob {
                        written.push_str("::*");
                    } else if let Some(binding) = leaf.binding {
                        bound.insert(binding, path.clone());
                    }
                    references.push((leaf.line, path, written));
                }
                i = end;
            }
            Tok::Ident(word) if word == "pub" && seq(t, i + 1, &["(", "in"]) => {
                // `pub(in crate::a)` says who may see an item; it uses nothing.
                i = after_group(t, i + 1);
            }
            Tok::Ident(first)
                if seq(t, i + 1, &["::"])
                    && !(i > 0 && matches!(t[i - 1].tok, Tok::PathSep | Tok::Punct('.'))) =>
            {
                let mut segments = vec![first.clone()];
                let mut j = i + 1;
                while seq(t, j, &["::"]) {
                    let Some(next) = ident(t, j + 1) else {
                        break;
                    };
                    segments.push(next.to_string());
                    j += 2;
                }
                if let Some((path, via)) = absolute(&logical(&inline), &segments, modules, aliases)
                {
                    // `ShardMessage::Announce` after `use crate::routing::ShardMessage`
                    // adds nothing to the `use`; `net::udp::x()` after
                    // `use crate::net` does.
                    let adds = via == Via::Path
                        || aliases
                            .get(first)
                            .and_then(|a| longest_module_prefix(a, modules))
                            != longest_module_prefix(&path, modules);
                    if adds {
                        references.push((t[i].line, path, segments.join("::")));
                    }
                }
                i = j;
            }
            _ => i += 1,
        }
    }
    (references, bound)
}

// ---------------------------------------------------------------- graph

fn module_graph(files: &[SourceFile]) -> Graph {
    let stripped: Vec<Stripped> = files
        .iter()
        .map(|f| strip_test_code(&lex(&f.text)))
        .collect();
    let mut test_only: BTreeSet<ModPath> = BTreeSet::new();
    for (file, s) in files.iter().zip(&stripped) {
        if s.whole_file {
            test_only.insert(file.module.clone());
        }
        for child in &s.test_modules {
            let mut path = file.module.clone();
            path.push(child.clone());
            test_only.insert(path);
        }
    }
    let is_test = |m: &ModPath| test_only.iter().any(|t| m.starts_with(t));
    let mut modules: BTreeSet<ModPath> = files
        .iter()
        .map(|f| f.module.clone())
        .filter(|m| !is_test(m))
        .collect();
    modules.insert(Vec::new());

    let mut graph: Graph = modules
        .iter()
        .map(|m| (m.clone(), BTreeMap::new()))
        .collect();
    for (file, s) in files.iter().zip(&stripped) {
        if is_test(&file.module) {
            continue;
        }
        let (_, aliases) = scan(&file.module, &s.tokens, &modules, &BTreeMap::new());
        let (references, _) = scan(&file.module, &s.tokens, &modules, &aliases);
        for (line, path, written) in references {
            let Some(target) = longest_module_prefix(&path, &modules) else {
                continue;
            };
            if target == file.module {
                continue;
            }
            let sites = graph
                .entry(file.module.clone())
                .or_default()
                .entry(target)
                .or_default();
            // One site a line: `use crate::a::{X, Y};` is one reference.
            if !sites.iter().any(|s| s.line == line) {
                sites.push(Site {
                    file: file.label.clone(),
                    line,
                    path: written,
                });
            }
        }
    }
    graph
}

/// The graph's strongly connected components with more than one module
/// (there are no self-edges), by Tarjan.
fn tangles(graph: &Graph) -> Vec<Vec<ModPath>> {
    let nodes: Vec<&ModPath> = graph.keys().collect();
    let index: BTreeMap<&ModPath, usize> = nodes.iter().enumerate().map(|(k, m)| (*m, k)).collect();
    let adjacency: Vec<Vec<usize>> = nodes
        .iter()
        .map(|m| {
            graph[*m]
                .keys()
                .filter_map(|to| index.get(to).copied())
                .collect()
        })
        .collect();
    let mut tarjan = Tarjan {
        adjacency: &adjacency,
        index: vec![None; nodes.len()],
        low: vec![0; nodes.len()],
        on_stack: vec![false; nodes.len()],
        stack: Vec::new(),
        next: 0,
        components: Vec::new(),
    };
    for v in 0..nodes.len() {
        if tarjan.index[v].is_none() {
            tarjan.visit(v);
        }
    }
    let mut components: Vec<Vec<ModPath>> = tarjan
        .components
        .into_iter()
        .filter(|c| c.len() > 1)
        .map(|c| {
            let mut members: Vec<ModPath> = c.into_iter().map(|k| nodes[k].clone()).collect();
            members.sort();
            members
        })
        .collect();
    components.sort();
    components
}

struct Tarjan<'g> {
    adjacency: &'g [Vec<usize>],
    index: Vec<Option<usize>>,
    low: Vec<usize>,
    on_stack: Vec<bool>,
    stack: Vec<usize>,
    next: usize,
    components: Vec<Vec<usize>>,
}

impl Tarjan<'_> {
    fn visit(&mut self, v: usize) {
        self.index[v] = Some(self.next);
        self.low[v] = self.next;
        self.next += 1;
        self.stack.push(v);
        self.on_stack[v] = true;
        let adjacency = self.adjacency;
        for &w in &adjacency[v] {
            match self.index[w] {
                None => {
                    self.visit(w);
                    self.low[v] = self.low[v].min(self.low[w]);
                }
                Some(index_w) if self.on_stack[w] => self.low[v] = self.low[v].min(index_w),
                Some(_) => {}
            }
        }
        if self.index[v] == Some(self.low[v]) {
            let mut component = Vec::new();
            loop {
                let w = self.stack.pop().expect("v is still on the stack");
                self.on_stack[w] = false;
                component.push(w);
                if w == v {
                    break;
                }
            }
            self.components.push(component);
        }
    }
}

/// Cycles that between them use every edge inside a tangle: for each such
/// edge `u -> v`, `u -> v` and a shortest way back from `v` to `u`. Each
/// cycle starts at its least module and does not repeat it at the end;
/// shortest cycles first.
fn find_cycles(graph: &Graph) -> Vec<Vec<ModPath>> {
    let mut cycles: BTreeSet<(usize, Vec<ModPath>)> = BTreeSet::new();
    for tangle in tangles(graph) {
        let members: BTreeSet<&ModPath> = tangle.iter().collect();
        for u in &tangle {
            for v in graph[u].keys().filter(|v| members.contains(v)) {
                let Some(back) = shortest_path(graph, &members, v, u) else {
                    continue;
                };
                // back is v ... u
                let mut cycle: Vec<ModPath> = vec![u.clone()];
                cycle.extend(back[..back.len() - 1].iter().cloned());
                let least = cycle
                    .iter()
                    .enumerate()
                    .min_by(|a, b| a.1.cmp(b.1))
                    .map_or(0, |(k, _)| k);
                cycle.rotate_left(least);
                cycles.insert((cycle.len(), cycle));
            }
        }
    }
    cycles.into_iter().map(|(_, cycle)| cycle).collect()
}

/// Breadth-first, within `members`: from, ..., to.
fn shortest_path(
    graph: &Graph,
    members: &BTreeSet<&ModPath>,
    from: &ModPath,
    to: &ModPath,
) -> Option<Vec<ModPath>> {
    let mut parent: BTreeMap<&ModPath, &ModPath> = BTreeMap::new();
    let mut queue = VecDeque::from([from]);
    let mut seen = BTreeSet::from([from]);
    while let Some(node) = queue.pop_front() {
        if node == to {
            let mut path = vec![node.clone()];
            let mut at = node;
            while let Some(p) = parent.get(at) {
                path.push((*p).clone());
                at = p;
            }
            path.reverse();
            return Some(path);
        }
        for next in graph[node].keys().filter(|n| members.contains(n)) {
            if seen.insert(next) {
                parent.insert(next, node);
                queue.push_back(next);
            }
        }
    }
    None
}

fn describe_cycles(graph: &Graph, cycles: &[Vec<ModPath>]) -> String {
    let mut lines = vec![format!(
        "the modules of aquatic/src import each other in a cycle ({} listed below); \
         the layering must point one way. Move the shared item down, or pass it in.",
        cycles.len()
    )];
    for tangle in tangles(graph) {
        let names: Vec<String> = tangle.iter().map(|m| name(m)).collect();
        lines.push(format!("  tangled together: {}", names.join(", ")));
    }
    for (k, cycle) in cycles.iter().enumerate() {
        let mut names: Vec<String> = cycle.iter().map(|m| name(m)).collect();
        names.push(name(&cycle[0]));
        lines.push(String::new());
        lines.push(format!("cycle {}: {}", k + 1, names.join(" -> ")));
        for (from, to) in cycle.iter().zip(cycle.iter().cycle().skip(1)) {
            let sites = &graph[from][to];
            let first = &sites[0];
            let mut line = format!(
                "    {} -> {}: {}:{} `{}`",
                name(from),
                name(to),
                first.file,
                first.line,
                first.path
            );
            if sites.len() > 1 {
                let more: Vec<String> = sites[1..].iter().map(|s| s.line.to_string()).collect();
                line.push_str(&format!(" (also line {})", more.join(", ")));
            }
            lines.push(line);
        }
    }
    lines.join("\n")
}

fn describe_graph(graph: &Graph) -> String {
    let edges: usize = graph.values().map(BTreeMap::len).sum();
    let mut lines = vec![format!(
        "module graph of aquatic/src: {} modules, {edges} edges",
        graph.len()
    )];
    for (from, targets) in graph {
        if targets.is_empty() {
            lines.push(format!("  {} (imports no other module)", name(from)));
        }
        for (to, sites) in targets {
            let at: Vec<String> = sites.iter().map(|s| s.line.to_string()).collect();
            lines.push(format!(
                "  {} -> {}  ({}:{})",
                name(from),
                name(to),
                sites[0].file,
                at.join(",")
            ));
        }
    }
    lines.join("\n")
}

// ---------------------------------------------------------------- the check

#[test]
fn library_modules_do_not_import_each_other_in_a_cycle() {
    let src = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src"));
    let files = read_library(src).expect("read aquatic/src");
    assert!(
        files.iter().any(|f| f.module.is_empty()),
        "no src/lib.rs under {}",
        src.display()
    );
    let graph = module_graph(&files);
    println!("{}", describe_graph(&graph));
    let edges: usize = graph.values().map(BTreeMap::len).sum();
    assert!(
        edges > 0,
        "found no references between the library's modules: the checker is broken"
    );
    let cycles = find_cycles(&graph);
    assert!(cycles.is_empty(), "{}", describe_cycles(&graph, &cycles));
}

// ---------------------------------------------------------------- the checker's own tests

fn graph_of(files: &[(&str, &str)]) -> Graph {
    let files: Vec<SourceFile> = files
        .iter()
        .map(|(relative, text)| SourceFile {
            label: format!("src/{relative}"),
            module: module_of(relative).expect("a library file"),
            text: text.to_string(),
        })
        .collect();
    module_graph(&files)
}

fn edge_names(graph: &Graph) -> BTreeSet<String> {
    graph
        .iter()
        .flat_map(|(from, targets)| {
            targets
                .keys()
                .map(move |to| format!("{} -> {}", name(from), name(to)))
        })
        .collect()
}

fn set(edges: &[&str]) -> BTreeSet<String> {
    edges.iter().map(|e| e.to_string()).collect()
}

fn site<'g>(graph: &'g Graph, from: &[&str], to: &[&str]) -> &'g [Site] {
    let from: ModPath = from.iter().map(|s| s.to_string()).collect();
    let to: ModPath = to.iter().map(|s| s.to_string()).collect();
    graph
        .get(&from)
        .and_then(|targets| targets.get(&to))
        .expect("the edge exists")
}

#[test]
fn files_map_to_modules() {
    assert_eq!(module_of("lib.rs"), Some(vec![]));
    assert_eq!(module_of("main.rs"), None);
    assert_eq!(module_of("bin/tool.rs"), None);
    assert_eq!(module_of("config.rs"), Some(vec!["config".to_string()]));
    assert_eq!(module_of("net/mod.rs"), Some(vec!["net".to_string()]));
    assert_eq!(
        module_of("net/udp.rs"),
        Some(vec!["net".to_string(), "udp".to_string()])
    );
}

const LIB: &str = "pub mod a;\npub mod b;\npub mod c;\nmod d;\npub(crate) mod e;\n";

#[test]
fn grouped_multi_line_use_tree_is_expanded() {
    let a = "use std::{collections::HashMap, fmt};
use crate::{
    b::{
        Thing,
        other::Deep,
    },
    c::{self, Renamed as Other},
};
";
    let graph = graph_of(&[
        ("lib.rs", LIB),
        ("a.rs", a),
        ("b/mod.rs", ""),
        ("b/other.rs", ""),
        ("c.rs", ""),
    ]);
    assert_eq!(
        edge_names(&graph),
        set(&["a -> b", "a -> b::other", "a -> c"])
    );
    let deep = &site(&graph, &["a"], &["b", "other"])[0];
    assert_eq!(
        (deep.file.as_str(), deep.line, deep.path.as_str()),
        ("src/a.rs", 5, "crate::b::other::Deep")
    );
    assert_eq!(site(&graph, &["a"], &["b"])[0].line, 4);
    let c: Vec<(usize, &str)> = site(&graph, &["a"], &["c"])
        .iter()
        .map(|s| (s.line, s.path.as_str()))
        .collect();
    assert_eq!(c, [(7, "crate::c")]);
}

#[test]
fn comments_and_string_literals_are_not_references() {
    let a = r##"//! crate::b in an inner doc comment
/// crate::b in a doc comment
// crate::b::f() in a line comment
/* crate::b /* nested */ still a comment crate::b */
/** crate::b */
#[doc = "crate::b"]
fn f() -> &'static str {
    let _ = '"';
    let _ = b'\'';
    let _ = '\\';
    let _ = "crate::b::in_a_string \" crate::b";
    let _ = b"crate::b";
    let _ = r#"crate::b "still inside" crate::b"#;
    'outer: loop { break 'outer; }
    crate::c::after_all_that();
    "crate::b"
}
"##;
    let graph = graph_of(&[("lib.rs", LIB), ("a.rs", a), ("b.rs", ""), ("c.rs", "")]);
    assert_eq!(edge_names(&graph), set(&["a -> c"]));
    assert_eq!(site(&graph, &["a"], &["c"])[0].line, 15);
}

#[test]
fn super_self_and_child_paths_resolve_from_the_module() {
    let b = "pub mod other;\npub use other::Deep;\npub fn helper() {}\n";
    let other = "use super::helper;
pub struct Deep;
fn f() { super::super::c::call(); }
";
    let c = "pub struct Renamed;
mod inline {
    pub fn z() { super::super::d::w(); }
}
fn g() { self::inline::z(); }
pub(crate) fn x() {}
pub(in crate) fn y() {}
";
    let d =
        "pub fn w() {}\nmacro_rules! m { () => { $crate::e::v() }; ($x:ident) => { $x::a() } }\n";
    let e = "use self::inner::*;\nmod inner {}\npub fn v() { crate::b::other::Deep::new(); }\n";
    let graph = graph_of(&[
        ("lib.rs", LIB),
        ("a.rs", ""),
        ("b/mod.rs", b),
        ("b/other.rs", other),
        ("c.rs", c),
        ("d.rs", d),
        ("e.rs", e),
    ]);
    assert_eq!(
        edge_names(&graph),
        set(&[
            "b -> b::other",
            "b::other -> b",
            "b::other -> c",
            "c -> d",
            "d -> e",
            "e -> b::other",
        ])
    );
}

#[test]
fn aliases_and_globs_and_longest_prefix() {
    let a = "use crate::b;
use crate::c::*;
fn f() { b::other::Deep::new(); crate::b::Thing::new(); crate::e::nested::deeper::f(); }
fn g() { b::Thing::new(); }
";
    let graph = graph_of(&[
        ("lib.rs", LIB),
        ("a.rs", a),
        ("b.rs", ""),
        ("b/other.rs", ""),
        ("c.rs", ""),
        ("e/mod.rs", ""),
        ("e/nested.rs", ""),
    ]);
    assert_eq!(
        edge_names(&graph),
        set(&["a -> b", "a -> b::other", "a -> c", "a -> e::nested"])
    );
    assert_eq!(site(&graph, &["a"], &["c"])[0].path, "crate::c::*");
    // `b::Thing` on line 4 reaches no further than `use crate::b` did.
    let b: Vec<(usize, &str)> = site(&graph, &["a"], &["b"])
        .iter()
        .map(|s| (s.line, s.path.as_str()))
        .collect();
    assert_eq!(b, [(1, "crate::b"), (3, "crate::b::Thing::new")]);
    assert_eq!(
        site(&graph, &["a"], &["b", "other"])[0].path,
        "b::other::Deep::new"
    );
}

#[test]
fn cfg_test_code_is_ignored() {
    let lib = "pub mod a;\npub mod b;\npub mod c;\n#[cfg(test)]\nmod test_support;\n";
    let a = "pub fn f() {}
#[cfg(test)]
mod tests {
    use crate::b::*;
    #[test]
    fn t() { crate::b::g(); }
}
#[cfg(test)]
#[allow(dead_code)]
pub(crate) fn helper() -> [u8; 2] { crate::b::h(); [0; 2] }
#[cfg(test)]
use crate::b::Thing;
fn after() { crate::c::x(); }
";
    let support = "use crate::a::*;\nuse crate::b::*;\n";
    let graph = graph_of(&[
        ("lib.rs", lib),
        ("a.rs", a),
        ("b.rs", ""),
        ("c.rs", ""),
        ("test_support.rs", support),
    ]);
    assert_eq!(edge_names(&graph), set(&["a -> c"]));
    assert!(!graph.contains_key(&vec!["test_support".to_string()]));
}

fn graph_from(edges: &[(&str, &str)]) -> Graph {
    let path = |s: &str| -> ModPath { s.split("::").map(str::to_string).collect() };
    let mut graph = Graph::new();
    for (from, to) in edges {
        graph.entry(path(to)).or_default();
        graph
            .entry(path(from))
            .or_default()
            .entry(path(to))
            .or_default()
            .push(Site {
                file: format!("src/{from}.rs"),
                line: 1,
                path: format!("crate::{to}"),
            });
    }
    graph
}

fn cycle_names(graph: &Graph) -> Vec<String> {
    find_cycles(graph)
        .iter()
        .map(|c| c.iter().map(|m| name(m)).collect::<Vec<_>>().join(" -> "))
        .collect()
}

#[test]
fn cycle_finder() {
    let acyclic = graph_from(&[("a", "b"), ("b", "c"), ("a", "c"), ("d", "a")]);
    assert!(find_cycles(&acyclic).is_empty());

    let graph = graph_from(&[
        ("a", "b"),
        ("b", "c"),
        ("c", "a"),
        ("c", "d"),
        ("d", "e"),
        ("e", "d"),
        ("f", "a"),
    ]);
    assert_eq!(cycle_names(&graph), ["d -> e", "a -> b -> c"]);

    // One tangle, two cycles through y: both are listed, so every edge to
    // break is named.
    let graph = graph_from(&[("x", "y"), ("y", "x"), ("y", "z"), ("z", "y")]);
    assert_eq!(cycle_names(&graph), ["x -> y", "y -> z"]);
    assert_eq!(tangles(&graph).len(), 1);
}

#[test]
fn parent_reexport_and_child_super_use_is_a_reported_cycle() {
    let parent = "mod child;\npub use child::Thing;\npub fn helper() {}\n";
    let child = "use super::helper;\npub struct Thing;\n";
    let graph = graph_of(&[
        ("lib.rs", "pub mod parent;\n"),
        ("parent/mod.rs", parent),
        ("parent/child.rs", child),
    ]);
    let cycles = find_cycles(&graph);
    assert_eq!(cycle_names(&graph), ["parent -> parent::child"]);
    let report = describe_cycles(&graph, &cycles);
    assert!(
        report.contains("cycle 1: parent -> parent::child -> parent"),
        "{report}"
    );
    assert!(
        report.contains("parent -> parent::child: src/parent/mod.rs:2 `child::Thing`"),
        "{report}"
    );
    assert!(
        report.contains("parent::child -> parent: src/parent/child.rs:1 `super::helper`"),
        "{report}"
    );
}
