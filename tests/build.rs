//! Turns `components.toml` into one constant per component of `handlers/dist/`, so that a
//! test names a component by a constant: a component listed and not built, or built and not
//! listed, is a build error that says which and what to do, not a panic in the middle of a run.

// A build script reports by failing: panicking with the reason is its way to do that.
#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::PathBuf;

fn main() {
    let here = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let list = here.join("components.toml");
    let dist = here.join("..").join("handlers").join("dist");
    println!("cargo:rerun-if-changed={}", list.display());
    println!("cargo:rerun-if-changed={}", dist.display());

    let text = std::fs::read_to_string(&list).unwrap_or_else(|e| panic!("{}: {e}", list.display()));
    let table: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", list.display()));

    let mut listed = Vec::new();
    for (role, names) in &table {
        if !["service", "fixture", "hostile"].contains(&role.as_str()) {
            panic!(
                "{}: unknown section [{role}] (service, fixture, hostile)",
                list.display()
            );
        }
        let names = names
            .as_table()
            .unwrap_or_else(|| panic!("{}: [{role}] is not a table", list.display()));
        for (name, language) in names {
            let language = language.as_str().unwrap_or_else(|| {
                panic!(
                    "{}: [{role}] {name}: the language is not a string",
                    list.display()
                )
            });
            if !["rust", "python", "javascript"].contains(&language) {
                panic!(
                    "{}: [{role}] {name} = \"{language}\": unknown language (rust, python, javascript)",
                    list.display()
                );
            }
            listed.push((name.clone(), role.clone(), language.to_owned()));
        }
    }

    let built: BTreeSet<String> = std::fs::read_dir(&dist)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}: the components are not built; run `make handlers` (or `make test`)",
                dist.display()
            )
        })
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".wasm").map(str::to_owned)
        })
        .collect();
    let names: BTreeSet<String> = listed.iter().map(|(n, _, _)| n.clone()).collect();
    let missing: Vec<&String> = names.difference(&built).collect();
    if !missing.is_empty() {
        panic!(
            "components listed in {} are not in {}: {missing:?}; run `make handlers` (or `make test`)",
            list.display(),
            dist.display()
        );
    }
    let unclassified: Vec<&String> = built.difference(&names).collect();
    if !unclassified.is_empty() {
        panic!(
            "components in {} are not classified in {}: {unclassified:?}; add each to its section there",
            dist.display(),
            list.display()
        );
    }

    let mut out = String::new();
    let mut all = String::new();
    for (name, role, language) in &listed {
        let ident = name.to_uppercase().replace('-', "_");
        let _ = writeln!(
            out,
            "/// `handlers/dist/{name}.wasm`: {role}, {language}.\n\
             pub const {ident}: Component = Component::new(\"{name}\", Role::{r}, Language::{l});",
            r = capitalize(role),
            l = capitalize(language),
        );
        let _ = write!(all, "{ident}, ");
    }
    let _ = writeln!(
        out,
        "\n/// Every component, in the order of `components.toml`.\npub const ALL: &[Component] = &[{all}];"
    );
    let dest = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("components.rs");
    std::fs::write(&dest, out).unwrap_or_else(|e| panic!("{}: {e}", dest.display()));
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}
