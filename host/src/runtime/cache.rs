//! Cache of precompiled component artifacts.
//!
//! Compiling a component with cranelift takes 0.1–2 s; loading its precompiled artifact takes
//! well under a millisecond. Artifacts are keyed by the component's sha256 *and* the engine's
//! compatibility hash (wasmtime version, compiler settings, target CPU features), so an
//! artifact is only ever loaded by an engine that could have produced it. A corrupt or stale
//! file is deleted and the component compiled again.
//!
//! Trust: loading an artifact maps native code into the process. The cache folder must be
//! writable only by the kasm process's user; kasm only writes files there itself, and only
//! loads a file whose name matches the hash of bytes it has just been given.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use wasmtime::Engine;
use wasmtime::component::Component;

/// A folder of `<sha256>-<engine>.cwasm` files.
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
    engine_key: String,
}

impl ArtifactCache {
    /// Open (creating if needed) the cache folder for `engine`.
    pub fn open(dir: impl Into<PathBuf>, engine: &Engine) -> anyhow::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating artifact cache folder {}", dir.display()))?;
        // `DefaultHasher::new()` uses fixed keys, so the key is stable across processes of
        // the same build, which is all that is needed: another build has another hash.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let engine_key = format!("{:016x}", h.finish());
        Ok(Self { dir, engine_key })
    }

    /// Where the artifact for `sha256` lives.
    pub fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}-{}.cwasm", self.engine_key))
    }

    /// The cached component for `sha256`, if a usable artifact is there.
    pub fn load(&self, engine: &Engine, sha256: &str) -> Option<Component> {
        let path = self.path(sha256);
        // Read into memory rather than mapping the file: a mapped artifact that someone
        // truncates or rewrites in place would take the process down with SIGBUS.
        let bytes = std::fs::read(&path).ok()?;
        // SAFETY: the bytes are a file this cache wrote with `Component::serialize` for the
        // same engine configuration (its name carries the engine's compatibility hash), in a
        // folder private to kasm; wasmtime additionally checks the artifact header and version.
        #[allow(unsafe_code)]
        let loaded = unsafe { Component::deserialize(engine, &bytes) };
        match loaded {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "discarding unusable precompiled artifact");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Write the artifact for `sha256` (atomically: a reader sees all of it or none).
    pub fn store(&self, sha256: &str, component: &Component) -> anyhow::Result<()> {
        let bytes = component.serialize().map_err(anyhow::Error::from)?;
        let path = self.path(sha256);
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)
            .with_context(|| format!("creating a temporary file in {}", self.dir.display()))?;
        tmp.write_all(&bytes)
            .context("writing precompiled artifact")?;
        tmp.persist(&path)
            .with_context(|| format!("moving precompiled artifact to {}", path.display()))?;
        Ok(())
    }
}
