//! The project documents its own formats: no reference may point at a document outside the
//! repository, every `docs/FORMATS.md#anchor` used in the tree names a heading of that page, and
//! the page's example responses get the verdict it gives them from the runtime's validator.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Text files of the project's own (not fixtures, not build output).
fn text_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                if !matches!(name.as_str(), "fixtures" | "target" | "__pycache__") && !name.starts_with('.') {
                    walk(&p, out);
                }
            } else if [".rs", ".md", ".py", ".toml", ".cu", ".cuh", ".hpp", ".txt"].iter().any(|x| name.ends_with(x))
                || name == "Makefile"
                || name == "make-7b-checkpoint"
            {
                out.push(p);
            }
        }
    }
    let r = root();
    let mut out = vec![r.join("README.md"), r.join("Makefile"), r.join("Cargo.toml")];
    for d in [
        "src",
        "export",
        "checkpoint",
        "kernels",
        "train",
        "capi",
        "python",
        "serve",
        "tests",
        "docs",
        "models",
        "benches",
        "examples",
        ".ci",
    ] {
        walk(&r.join(d), &mut out);
    }
    out
}

#[test]
fn no_reference_leaves_the_repository() {
    // Built at run time so this file does not match itself.
    let forbidden = [
        ["SPEC", " §"].concat(),
        ["SPEC", ".md"].concat(),
        ["../", "shared"].concat(),
        ["shared/", "TRAINING"].concat(),
    ];
    let mut hits = Vec::new();
    for f in text_files() {
        let Ok(text) = std::fs::read_to_string(&f) else { continue };
        for (i, line) in text.lines().enumerate() {
            if forbidden.iter().any(|p| line.contains(p.as_str())) {
                hits.push(format!("{}:{}: {}", f.strip_prefix(root()).unwrap_or(&f).display(), i + 1, line.trim()));
            }
        }
    }
    assert!(hits.is_empty(), "references to documents outside the repository:\n{}", hits.join("\n"));
}

/// GitHub's anchor for a heading: lowercase, spaces to '-', punctuation other than '-' and '_' dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn every_formats_anchor_exists() {
    let page = std::fs::read_to_string(root().join("docs/FORMATS.md")).unwrap();
    let anchors: Vec<String> =
        page.lines().filter_map(|l| l.strip_prefix('#')).map(|l| slug(l.trim_start_matches('#'))).collect();
    let mut missing = Vec::new();
    for f in text_files().into_iter().filter(|f| !f.ends_with("tests/docs.rs")) {
        let Ok(text) = std::fs::read_to_string(&f) else { continue };
        for (i, _) in text.match_indices("FORMATS.md#") {
            let rest = &text[i + "FORMATS.md#".len()..];
            let anchor: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '-' || *c == '_').collect();
            if !anchors.contains(&anchor) {
                missing.push(format!("{}: #{anchor}", f.display()));
            }
        }
        // In-page links `(#anchor)` of FORMATS.md itself.
        if f.ends_with("docs/FORMATS.md") {
            for (i, _) in text.match_indices("](#") {
                let anchor: String = text[i + 3..].chars().take_while(|c| *c != ')').collect();
                if !anchors.contains(&anchor) {
                    missing.push(format!("FORMATS.md: (#{anchor})"));
                }
            }
        }
    }
    assert!(missing.is_empty(), "anchors not in docs/FORMATS.md ({anchors:?}):\n{}", missing.join("\n"));
}

/// The ```text blocks of the section `## The response`.
fn response_examples(page: &str) -> Vec<String> {
    let section = page.split("\n## The response").nth(1).unwrap().split("\n## ").next().unwrap();
    section.split("```text\n").skip(1).map(|b| b.split("\n```").next().unwrap().to_string()).collect()
}

#[test]
fn the_documented_examples_get_the_documented_verdicts() {
    let page = std::fs::read_to_string(root().join("docs/FORMATS.md")).unwrap();
    let blocks = response_examples(&page);
    assert_eq!(blocks.len(), 3, "the format sketch, one valid example, the invalid ones");
    let rules = st::scene::Rules::new((640, 480), "Is the cup left of the plate? (A) yes (B) no");
    let valid = st::scene::parse_response(&blocks[1], &rules);
    assert!(valid.valid, "{:?}", valid.reasons);
    let invalid: Vec<&str> = blocks[2].lines().collect();
    assert_eq!(invalid.len(), 5);
    for line in invalid {
        let r = st::scene::parse_response(line, &rules);
        assert!(!r.valid && !r.reasons.is_empty(), "documented as invalid but accepted: {line}");
    }
}
