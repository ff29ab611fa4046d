//! Loading a component: from bytes to something that can be instantiated, or a refusal that
//! names its cause.
//!
//! Checks run cheapest first, and each refusal has its own message, because the person
//! reading it is deciding what to fix: the size limit; the `\0asm` magic; core module versus
//! component; the compile itself; the world (a handler must export `handle`); every import
//! against what kasm provides and what the handler is granted; finally the link, which
//! checks the types. Nothing here touches the active version of a handler: a refused
//! upload leaves the old one serving.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;
use wasmtime::component::types::ComponentItem;

use crate::capabilities::{Capability, Grants};

/// The world every handler implements.
pub const WORLD: &str = "kasm:handler/handler@0.1.0";
/// The WIT package this host provides.
pub const PACKAGE: &str = "kasm:handler";
/// Its version.
pub const PACKAGE_VERSION: &str = "0.1.0";

/// WASI packages linked for every handler, with nothing granted: no preopened directories,
/// no environment, no arguments, no network. Rust's std imports several of them even for a
/// handler that does no I/O.
const WASI_PACKAGES: [&str; 6] = [
    "wasi:io",
    "wasi:cli",
    "wasi:clocks",
    "wasi:random",
    "wasi:filesystem",
    "wasi:sockets",
];

/// Why a component was refused.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Over the configured size limit.
    #[error("component is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Not WebAssembly at all.
    #[error(
        "not a WebAssembly file: it does not start with the wasm magic bytes `\\0asm` (it starts with {head})"
    )]
    NotWasm {
        /// The first bytes, in hex.
        head: String,
    },
    /// A core module rather than a component.
    #[error(
        "this is a core WebAssembly module, not a component: build the handler for the `wasm32-wasip2` target so it is a component of world {WORLD}"
    )]
    CoreModule,
    /// Malformed or failed to compile.
    #[error("invalid component: {0}")]
    Invalid(String),
    /// Does not export `handle`: built for another world.
    #[error(
        "component was built for another world: it does not export `handle` (it exports: {exports}); a kasm handler implements world {WORLD}"
    )]
    OtherWorld {
        /// What it exports instead.
        exports: String,
    },
    /// Exports `handle` with the wrong type.
    #[error("component does not match world {WORLD}: {0}")]
    WrongExport(String),
    /// Imports a capability not granted to the handler.
    #[error(
        "component imports `{import}` (capability `{capability}`), which is not granted to handler `{handler}` (granted: {granted})"
    )]
    NotGranted {
        /// The import's full name.
        import: String,
        /// The capability it needs.
        capability: Capability,
        /// The handler being loaded.
        handler: String,
        /// What the handler is granted.
        granted: String,
    },
    /// Built against an incompatible version of the kasm contract.
    #[error(
        "component imports `{import}`, but this host provides {PACKAGE}@{PACKAGE_VERSION}: rebuild the handler against a compatible kasm-guest"
    )]
    IncompatibleVersion {
        /// The import's full name.
        import: String,
    },
    /// Imports something kasm does not provide at all.
    #[error("component imports `{import}`, which kasm does not provide to handlers")]
    UnknownImport {
        /// The import's full name.
        import: String,
    },
    /// The link (type check of imports) failed.
    #[error("component cannot be linked: {0}")]
    Link(String),
    /// Reading the file failed.
    #[error("cannot read component {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// What one import of a component is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ImportKind {
    /// A kasm capability.
    Capability {
        /// Which one.
        capability: Capability,
    },
    /// The `types` interface of the contract (no functions).
    ContractTypes,
    /// A WASI interface, linked with nothing granted.
    Wasi,
}

/// One import of a component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImportInfo {
    /// Full name, e.g. `kasm:handler/producer@0.1.0`.
    pub name: String,
    /// What it is.
    #[serde(flatten)]
    pub kind: ImportKind,
}

/// A component that passed every check.
#[derive(Debug, Clone, Serialize)]
pub struct ComponentInfo {
    /// Hex sha256 of the component bytes: the component's identity.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// The world it implements.
    pub world: &'static str,
    /// Its imports.
    pub imports: Vec<ImportInfo>,
    /// Its exports.
    pub exports: Vec<String>,
    /// The capabilities it needs (what its handler must be granted).
    pub capabilities: Vec<Capability>,
    /// The language its `kasm:guest` custom section names (the Python SDK's build writes
    /// one), if it has one: a hint for defaults such as instance reuse, never a check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
}

/// The name of the custom section in which an SDK's build describes the component (JSON: its
/// `language`, SDK and toolchain versions, capabilities).
pub const GUEST_SECTION: &str = "kasm:guest";

/// The `language` of the component's [`GUEST_SECTION`], if it has one that says.
pub fn guest_language(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Guest {
        language: String,
    }
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        let Ok(wasmparser::Payload::CustomSection(section)) = payload else {
            continue;
        };
        if section.name() == GUEST_SECTION {
            return serde_json::from_slice::<Guest>(section.data())
                .ok()
                .map(|g| g.language.to_ascii_lowercase());
        }
    }
    None
}

/// How the compiled form was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum LoadSource {
    /// Compiled with cranelift now.
    Compiled,
    /// Loaded from the precompiled artifact cache.
    Cache,
}

/// How a load went.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LoadReport {
    /// Compiled or from the cache.
    pub source: LoadSource,
    /// Time to obtain the compiled component.
    pub elapsed: Duration,
}

/// Hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The cheap checks on raw bytes: size, magic, component layer.
pub(crate) fn check_bytes(bytes: &[u8], limit: u64) -> Result<(), LoadError> {
    let size = bytes.len() as u64;
    if size > limit {
        return Err(LoadError::TooLarge { size, limit });
    }
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        let head = bytes
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ");
        let head = if head.is_empty() {
            "nothing (empty file)".to_owned()
        } else {
            head
        };
        return Err(LoadError::NotWasm { head });
    }
    if wasmparser::Parser::is_core_wasm(bytes) {
        return Err(LoadError::CoreModule);
    }
    if !wasmparser::Parser::is_component(bytes) {
        return Err(LoadError::Invalid(format!(
            "unknown WebAssembly version/layer bytes {:02x?}",
            &bytes[4..8]
        )));
    }
    Ok(())
}

/// Compile `bytes`, or load the artifact from `cache`, reporting which.
pub(crate) fn compile(
    engine: &Engine,
    bytes: &[u8],
    sha256: &str,
    cache: Option<&super::cache::ArtifactCache>,
) -> Result<(Component, LoadReport), LoadError> {
    let start = Instant::now();
    if let Some(c) = cache.and_then(|c| c.load(engine, sha256)) {
        return Ok((
            c,
            LoadReport {
                source: LoadSource::Cache,
                elapsed: start.elapsed(),
            },
        ));
    }
    let component =
        Component::new(engine, bytes).map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
    if let Some(cache) = cache
        && let Err(e) = cache.store(sha256, &component)
    {
        tracing::warn!(error = %format!("{e:#}"), sha256, "could not cache precompiled artifact");
    }
    Ok((
        component,
        LoadReport {
            source: LoadSource::Compiled,
            elapsed: start.elapsed(),
        },
    ))
}

/// Split `ns:pkg/iface@ver` into (`ns:pkg`, `iface`, `ver`).
fn split_name(name: &str) -> Option<(&str, &str, Option<&str>)> {
    let (pkg, rest) = name.split_once('/')?;
    let (iface, ver) = match rest.split_once('@') {
        Some((i, v)) => (i, Some(v)),
        None => (rest, None),
    };
    Some((pkg, iface, ver))
}

fn compatible_version(ver: Option<&str>) -> bool {
    // 0.x semver: 0.1.y is compatible with 0.1.0.
    ver.is_some_and(|v| v == "0.1" || v.starts_with("0.1."))
}

/// Classify every import and check it against what the handler is granted, then check the
/// exports. Returns the component's description.
pub(crate) fn check_world(
    engine: &Engine,
    component: &Component,
    sha256: String,
    size: u64,
    handler: &str,
    grants: &Grants,
) -> Result<ComponentInfo, LoadError> {
    let ty = component.component_type();
    let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_owned()).collect();
    let handle_is_func = ty
        .exports(engine)
        .any(|(n, item)| n == "handle" && matches!(item.ty, ComponentItem::ComponentFunc(_)));
    if !handle_is_func {
        let exports = if exports.is_empty() {
            "nothing".to_owned()
        } else {
            exports.join(", ")
        };
        return Err(LoadError::OtherWorld { exports });
    }

    let mut imports = Vec::new();
    let mut needed = BTreeSet::new();
    for (name, _) in ty.imports(engine) {
        let unknown = || LoadError::UnknownImport {
            import: name.to_owned(),
        };
        let Some((pkg, iface, ver)) = split_name(name) else {
            return Err(unknown());
        };
        // A capability import: granted, or refused naming the import.
        let capability_import = |capability: Capability| {
            if grants.allows(capability) {
                return Ok(ImportKind::Capability { capability });
            }
            let granted: Vec<String> = grants.granted().iter().map(|c| c.to_string()).collect();
            Err(LoadError::NotGranted {
                import: name.to_owned(),
                capability,
                handler: handler.to_owned(),
                granted: granted.join(", "),
            })
        };
        let kind = if pkg == PACKAGE {
            if !compatible_version(ver) {
                return Err(LoadError::IncompatibleVersion {
                    import: name.to_owned(),
                });
            }
            if iface == "types" {
                ImportKind::ContractTypes
            } else {
                let capability = Capability::from_interface(iface).ok_or_else(unknown)?;
                needed.insert(capability);
                capability_import(capability)?
            }
        } else if pkg == "wasi:http" && ver.is_some_and(|v| v.starts_with("0.2.")) {
            // Outbound HTTP only: a handler serves no HTTP.
            if iface != "outgoing-handler" && iface != "types" {
                return Err(unknown());
            }
            needed.insert(Capability::Http);
            capability_import(Capability::Http)?
        } else if WASI_PACKAGES.contains(&pkg) && ver.is_some_and(|v| v.starts_with("0.2.")) {
            ImportKind::Wasi
        } else {
            return Err(unknown());
        };
        imports.push(ImportInfo {
            name: name.to_owned(),
            kind,
        });
    }
    Ok(ComponentInfo {
        sha256,
        size,
        world: WORLD,
        imports,
        exports,
        capabilities: needed.into_iter().collect(),
        language: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_section_names_the_language_and_nothing_else_does() {
        // A component preamble, then custom sections.
        let mut bytes = b"\0asm\x0d\x00\x01\x00".to_vec();
        let section = |bytes: &mut Vec<u8>, name: &str, data: &[u8]| {
            let mut body = vec![u8::try_from(name.len()).unwrap()];
            body.extend(name.as_bytes());
            body.extend(data);
            bytes.push(0);
            bytes.push(u8::try_from(body.len()).unwrap());
            bytes.extend(body);
        };
        assert_eq!(guest_language(&bytes), None);
        section(&mut bytes, "producers", br#"{"language": "python"}"#);
        assert_eq!(guest_language(&bytes), None, "another section's JSON");
        section(
            &mut bytes,
            GUEST_SECTION,
            br#"{"language": "Python", "sdk": "0.1.0"}"#,
        );
        assert_eq!(guest_language(&bytes).as_deref(), Some("python"));
    }

    #[test]
    fn byte_checks_name_the_cause() {
        let limit = 1 << 20;
        assert!(matches!(
            check_bytes(b"hello world", limit),
            Err(LoadError::NotWasm { .. })
        ));
        assert!(matches!(
            check_bytes(b"", limit),
            Err(LoadError::NotWasm { .. })
        ));
        let core = b"\0asm\x01\0\0\0";
        assert!(matches!(
            check_bytes(core, limit),
            Err(LoadError::CoreModule)
        ));
        let component = b"\0asm\x0d\0\x01\0";
        assert!(check_bytes(component, limit).is_ok());
        assert!(matches!(
            check_bytes(component, 4),
            Err(LoadError::TooLarge { size: 8, limit: 4 })
        ));
    }

    #[test]
    fn names_and_versions() {
        assert_eq!(
            split_name("kasm:handler/kv@0.1.0"),
            Some(("kasm:handler", "kv", Some("0.1.0")))
        );
        assert!(compatible_version(Some("0.1.3")));
        assert!(!compatible_version(Some("0.2.0")));
        assert!(!compatible_version(Some("1.0.0")));
        assert!(!compatible_version(None));
    }
}
