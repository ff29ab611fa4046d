//! The data folder (`data_dir`) and every path kasm keeps in it, named in one place.
//!
//! ```text
//! <data_dir>/
//!   kv.redb              the kv stores of every handler
//!   ledger.redb          the dedup ledger, with `ledger_store = "file"` (and its journals)
//!   active.json          the active component version of each handler (hot swap)
//!   components/          every deployed component, by sha256
//!   artifacts/           precompiled components, unless `--cache-dir` / `KASM_CACHE_DIR`
//!   sql/<handler>.sqlite a handler's SQLite database, unless its grant names a file
//! ```

use std::path::{Path, PathBuf};

/// The data folder of a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDir(PathBuf);

impl DataDir {
    /// The folder at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self(path.into())
    }

    /// The folder itself.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The kv stores' database.
    pub fn kv(&self) -> PathBuf {
        self.0.join("kv.redb")
    }

    /// The file ledger's database.
    pub fn ledger(&self) -> PathBuf {
        self.0.join("ledger.redb")
    }

    /// The persisted active versions.
    pub fn active_versions(&self) -> PathBuf {
        self.0.join("active.json")
    }

    /// The deployed components, by sha256.
    pub fn components(&self) -> PathBuf {
        self.0.join("components")
    }

    /// The deployed component `sha256`.
    pub fn component(&self, sha256: &str) -> PathBuf {
        self.components().join(format!("{sha256}.wasm"))
    }

    /// The default folder of precompiled components.
    pub fn artifacts(&self) -> PathBuf {
        self.0.join("artifacts")
    }

    /// Where a handler's SQLite database is: `file` relative to the folder (an absolute
    /// one as it is), by default `sql/<handler>.sqlite`.
    pub fn sqlite(&self, handler: &str, file: Option<&Path>) -> PathBuf {
        match file {
            Some(p) if p.is_absolute() => p.to_owned(),
            Some(p) => self.0.join(p),
            None => self.0.join("sql").join(format!("{handler}.sqlite")),
        }
    }
}
