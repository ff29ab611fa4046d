//! `kasm:handler/kv`: a key-value store private to each handler.
//!
//! The store is a trait so a shared store can come without touching the runtime.
//! [`FileKv`] is the embedded store a host uses (`<data_dir>/kv.redb`: survives restarts and
//! version swaps); [`MemoryKv`] is the in-memory one used by `kasm invoke` and by tests.
//!
//! kv writes are *staged* like publishes and SQL: a handler reads its own writes (and those of
//! the records before it in the same batch), and the writes of the records that ended `ok` are
//! applied together, in one store transaction per batch ([`KvStore::apply`]), after the batch's
//! publishes are acknowledged and before its ledger entries are written. A record that fails
//! leaves nothing behind in the store.
//!
//! The same transaction records which events wrote (the store's *inbox*, like the `sql`
//! capability's `kasm_inbox`), and the worker's dedup check asks it: an event whose kv writes
//! were applied is never run again on this store, even if the host stopped before the batch's
//! ledger entries were written. A backend without transactions keeps no inbox.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use std::sync::Arc;

use crate::wit as bindings;

use super::state::{CallState, CapabilityState};

/// A key-value backend. Keys are scoped by `namespace` (the handler name), so handlers never
/// see each other's entries.
#[async_trait]
pub trait KvStore: Send + Sync + std::fmt::Debug {
    /// The live value of `key`, if any.
    async fn get(&self, namespace: &str, key: &str) -> anyhow::Result<Option<Vec<u8>>>;
    /// Store `value`; with `ttl`, it expires after that long.
    async fn set(
        &self,
        namespace: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> anyhow::Result<()>;
    /// Remove `key`; returns whether a live entry was there.
    async fn delete(&self, namespace: &str, key: &str) -> anyhow::Result<bool>;
    /// Apply `writes` in order, all or none, and note `events` (the ledger keys of the records
    /// that made them) in the inbox of `namespace` at `at_ms`, in the same transaction: when
    /// this returns `Ok` every write and every note is durable. A backend that has
    /// transactions overrides this; the default applies one by one and notes nothing.
    async fn apply(
        &self,
        namespace: &str,
        writes: Vec<KvWrite>,
        events: Vec<String>,
        at_ms: i64,
    ) -> anyhow::Result<()> {
        let _ = (events, at_ms);
        for w in writes {
            match w.value {
                Some(value) => self.set(namespace, &w.key, value, w.ttl).await?,
                None => {
                    self.delete(namespace, &w.key).await?;
                }
            }
        }
        Ok(())
    }

    /// Which of `events` the inbox of `namespace` holds (their writes were applied).
    async fn applied(
        &self,
        namespace: &str,
        events: &[&str],
    ) -> anyhow::Result<std::collections::HashSet<String>> {
        let _ = (namespace, events);
        Ok(std::collections::HashSet::new())
    }

    /// Forget the inbox notes of `namespace` made before `cutoff_ms`; how many.
    async fn sweep_applied(&self, namespace: &str, cutoff_ms: i64) -> anyhow::Result<u64> {
        let _ = (namespace, cutoff_ms);
        Ok(0)
    }
}

/// One staged kv write: a set (with its TTL, counted from when it is applied) or a delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvWrite {
    /// The key.
    pub key: String,
    /// The new value; `None` deletes the key.
    pub value: Option<Vec<u8>>,
    /// With a value: expire after this long.
    pub ttl: Option<Duration>,
}

#[derive(Debug)]
struct Entry {
    value: Vec<u8>,
    expires: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|t| t > now)
    }
}

/// An in-memory [`KvStore`]; contents live as long as the value.
#[derive(Debug, Default)]
pub struct MemoryKv {
    map: Mutex<HashMap<(String, String), Entry>>,
}

impl MemoryKv {
    fn lock(&self) -> anyhow::Result<std::sync::MutexGuard<'_, HashMap<(String, String), Entry>>> {
        self.map
            .lock()
            .map_err(|_| anyhow::anyhow!("kv store lock poisoned"))
    }
}

#[async_trait]
impl KvStore for MemoryKv {
    async fn get(&self, namespace: &str, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let now = Instant::now();
        let map = self.lock()?;
        Ok(map
            .get(&(namespace.to_owned(), key.to_owned()))
            .filter(|e| e.live(now))
            .map(|e| e.value.clone()))
    }

    async fn set(
        &self,
        namespace: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> anyhow::Result<()> {
        let expires = ttl.map(|d| Instant::now() + d);
        self.lock()?.insert(
            (namespace.to_owned(), key.to_owned()),
            Entry { value, expires },
        );
        Ok(())
    }

    async fn delete(&self, namespace: &str, key: &str) -> anyhow::Result<bool> {
        let now = Instant::now();
        let removed = self.lock()?.remove(&(namespace.to_owned(), key.to_owned()));
        Ok(removed.is_some_and(|e| e.live(now)))
    }
}

const KV: redb::TableDefinition<(&str, &str), &[u8]> = redb::TableDefinition::new("kv");

/// The inbox: (namespace, event ledger key) → when its writes were applied (ms since the
/// epoch).
const INBOX: redb::TableDefinition<(&str, &str), i64> = redb::TableDefinition::new("kv_inbox");

/// The embedded [`KvStore`]: a redb file. Each value is stored after an 8-byte big-endian
/// expiry (ms since the Unix epoch; 0 = never), so a TTL survives a restart. Expired entries
/// read as absent and are removed when the store is opened.
#[derive(Debug, Clone)]
pub struct FileKv {
    db: std::sync::Arc<redb::Database>,
}

fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The live value of a stored entry.
fn live(stored: &[u8], now_ms: u64) -> Option<Vec<u8>> {
    let (expiry, value) = stored.split_at_checked(8)?;
    let expiry = u64::from_be_bytes(expiry.try_into().ok()?);
    (expiry == 0 || expiry > now_ms).then(|| value.to_vec())
}

impl FileKv {
    /// Open (creating) the store at `path`; expired entries are removed.
    pub fn open(path: &std::path::Path) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let what = || format!("opening the kv store {}", path.display());
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(what)?;
        }
        let db = redb::Builder::new()
            .set_cache_size(32 << 20)
            .create(path)
            .with_context(what)?;
        let tx = db.begin_write().with_context(what)?;
        {
            let mut t = tx.open_table(KV).with_context(what)?;
            let now = epoch_ms();
            t.retain(|_, v| live(v, now).is_some()).with_context(what)?;
        }
        tx.commit().with_context(what)?;
        Ok(Self {
            db: std::sync::Arc::new(db),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::Database) -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db)).await?
    }
}

#[async_trait]
impl KvStore for FileKv {
    async fn get(&self, namespace: &str, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let (ns, key) = (namespace.to_owned(), key.to_owned());
        self.blocking(move |db| {
            use redb::ReadableDatabase as _;
            let tx = db.begin_read()?;
            let t = tx.open_table(KV)?;
            Ok(t.get((ns.as_str(), key.as_str()))?
                .and_then(|v| live(v.value(), epoch_ms())))
        })
        .await
    }

    async fn set(
        &self,
        namespace: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> anyhow::Result<()> {
        let (ns, key) = (namespace.to_owned(), key.to_owned());
        let expiry = ttl.map_or(0, |d| {
            epoch_ms().saturating_add(d.as_millis() as u64).max(1)
        });
        self.blocking(move |db| {
            let mut stored = Vec::with_capacity(8 + value.len());
            stored.extend_from_slice(&expiry.to_be_bytes());
            stored.extend_from_slice(&value);
            let tx = db.begin_write()?;
            tx.open_table(KV)?
                .insert((ns.as_str(), key.as_str()), stored.as_slice())?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// One redb write transaction (one durable commit) for the whole batch, its inbox notes
    /// included.
    async fn apply(
        &self,
        namespace: &str,
        writes: Vec<KvWrite>,
        events: Vec<String>,
        at_ms: i64,
    ) -> anyhow::Result<()> {
        if writes.is_empty() && events.is_empty() {
            return Ok(());
        }
        let ns = namespace.to_owned();
        self.blocking(move |db| {
            let now = epoch_ms();
            let tx = db.begin_write()?;
            {
                let mut inbox = tx.open_table(INBOX)?;
                for e in &events {
                    inbox.insert((ns.as_str(), e.as_str()), at_ms)?;
                }
            }
            {
                let mut t = tx.open_table(KV)?;
                for w in &writes {
                    match &w.value {
                        Some(value) => {
                            let expiry = w
                                .ttl
                                .map_or(0, |d| now.saturating_add(d.as_millis() as u64).max(1));
                            let mut stored = Vec::with_capacity(8 + value.len());
                            stored.extend_from_slice(&expiry.to_be_bytes());
                            stored.extend_from_slice(value);
                            t.insert((ns.as_str(), w.key.as_str()), stored.as_slice())?;
                        }
                        None => {
                            t.remove((ns.as_str(), w.key.as_str()))?;
                        }
                    }
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn applied(
        &self,
        namespace: &str,
        events: &[&str],
    ) -> anyhow::Result<std::collections::HashSet<String>> {
        if events.is_empty() {
            return Ok(std::collections::HashSet::new());
        }
        let ns = namespace.to_owned();
        let events: Vec<String> = events.iter().map(|e| (*e).to_owned()).collect();
        self.blocking(move |db| {
            use redb::{ReadableDatabase as _, TableError};
            let tx = db.begin_read()?;
            let t = match tx.open_table(INBOX) {
                Ok(t) => t,
                Err(TableError::TableDoesNotExist(_)) => {
                    return Ok(std::collections::HashSet::new());
                }
                Err(e) => return Err(e.into()),
            };
            let mut found = std::collections::HashSet::new();
            for e in events {
                if t.get((ns.as_str(), e.as_str()))?.is_some() {
                    found.insert(e);
                }
            }
            Ok(found)
        })
        .await
    }

    async fn sweep_applied(&self, namespace: &str, cutoff_ms: i64) -> anyhow::Result<u64> {
        let ns = namespace.to_owned();
        self.blocking(move |db| {
            let tx = db.begin_write()?;
            let mut removed = 0;
            {
                let mut t = tx.open_table(INBOX)?;
                t.retain(|(n, _), at| {
                    let old = n == ns.as_str() && at < cutoff_ms;
                    removed += u64::from(old);
                    !old
                })?;
            }
            tx.commit()?;
            Ok(removed)
        })
        .await
    }

    async fn delete(&self, namespace: &str, key: &str) -> anyhow::Result<bool> {
        let (ns, key) = (namespace.to_owned(), key.to_owned());
        self.blocking(move |db| {
            let tx = db.begin_write()?;
            let was_live = tx
                .open_table(KV)?
                .remove((ns.as_str(), key.as_str()))?
                .is_some_and(|v| live(v.value(), epoch_ms()).is_some());
            tx.commit()?;
            Ok(was_live)
        })
        .await
    }
}

impl bindings::kasm::handler::kv::Host for CapabilityState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, String> {
        let (kv, ns, limit) = self.kv_parts()?;
        if let Some(staged) = self.call.staged_kv(&key) {
            return Ok(staged);
        }
        bounded(limit, kv.get(&ns, &key)).await
    }

    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<(), String> {
        self.kv_parts()?;
        self.stage_kv(KvWrite {
            key,
            value: Some(value),
            ttl: ttl_ms.map(Duration::from_millis),
        })
    }

    async fn delete(&mut self, key: String) -> Result<bool, String> {
        let (kv, ns, limit) = self.kv_parts()?;
        let was = match self.call.staged_kv(&key) {
            Some(staged) => staged.is_some(),
            None => bounded(limit, kv.get(&ns, &key)).await?.is_some(),
        };
        self.stage_kv(KvWrite {
            key,
            value: None,
            ttl: None,
        })?;
        Ok(was)
    }
}

impl CallState {
    /// What this call and the records before it in the batch staged for `key`: `Some(value)`
    /// (`Some(None)`: deleted) or `None` when nothing is staged and the store decides.
    fn staged_kv(&self, key: &str) -> Option<Option<Vec<u8>>> {
        if let Some(w) = self.effects.kv_writes.iter().rev().find(|w| w.key == key) {
            return Some(w.value.clone());
        }
        self.kv_batch.get(key).cloned()
    }
}

impl CapabilityState {
    /// Stage a kv write, counted against what one call may make the host hold.
    fn stage_kv(&mut self, w: KvWrite) -> Result<(), String> {
        let bytes = w.key.len() + w.value.as_ref().map_or(0, Vec::len);
        if self.call.queued_bytes.saturating_add(bytes) > self.env.max_call_output_bytes {
            return Err(format!(
                "this call's records, pushes and kv writes would exceed {} bytes",
                self.env.max_call_output_bytes
            ));
        }
        self.call.queued_bytes += bytes;
        self.call.effects.kv_writes.push(w);
        Ok(())
    }

    fn kv_parts(&self) -> Result<(Arc<dyn KvStore>, String, Duration), String> {
        if !self.env.grants.kv {
            return Err(format!(
                "the kv capability is not granted to handler `{}`",
                self.env.name
            ));
        }
        Ok((
            self.env.kv.clone(),
            self.env.name.clone(),
            self.env.kv_timeout,
        ))
    }
}

/// Run a backend call with a timeout: a host import that never returns is invisible to the
/// epoch deadline, so it gets its own bound.
async fn bounded<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = anyhow::Result<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("kv backend error: {e:#}")),
        Err(_) => Err(format!("kv backend did not answer within {limit:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_file_store_keeps_values_and_ttls_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.redb");
        {
            let kv = FileKv::open(&path).unwrap();
            kv.set("a", "k", b"1".to_vec(), None).await.unwrap();
            kv.set("a", "short", b"2".to_vec(), Some(Duration::from_millis(1)))
                .await
                .unwrap();
            kv.set("a", "long", b"3".to_vec(), Some(Duration::from_secs(3600)))
                .await
                .unwrap();
            assert_eq!(kv.get("b", "k").await.unwrap(), None, "namespaces apart");
        }
        std::thread::sleep(Duration::from_millis(5));
        let kv = FileKv::open(&path).unwrap();
        assert_eq!(kv.get("a", "k").await.unwrap(), Some(b"1".to_vec()));
        assert_eq!(kv.get("a", "short").await.unwrap(), None, "expired");
        assert_eq!(kv.get("a", "long").await.unwrap(), Some(b"3".to_vec()));
        assert!(kv.delete("a", "k").await.unwrap());
        assert!(!kv.delete("a", "k").await.unwrap());
        assert_eq!(kv.get("a", "k").await.unwrap(), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_of_writes_is_applied_in_order_in_one_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let kv = FileKv::open(&dir.path().join("kv.redb")).unwrap();
        kv.set("a", "gone", b"0".to_vec(), None).await.unwrap();
        let w = |key: &str, value: Option<&[u8]>| KvWrite {
            key: key.to_owned(),
            value: value.map(<[u8]>::to_vec),
            ttl: None,
        };
        kv.apply(
            "a",
            vec![
                w("k", Some(b"1")),
                w("k", Some(b"2")),
                w("gone", None),
                w("new", Some(b"3")),
            ],
            vec!["ev-1".into(), "ev-2".into()],
            1_000,
        )
        .await
        .unwrap();
        assert_eq!(kv.get("a", "k").await.unwrap(), Some(b"2".to_vec()));
        assert_eq!(kv.get("a", "gone").await.unwrap(), None);
        assert_eq!(kv.get("a", "new").await.unwrap(), Some(b"3".to_vec()));
        assert_eq!(kv.get("b", "k").await.unwrap(), None);
        // The events that wrote are in the inbox of their namespace, and only there.
        let found = kv.applied("a", &["ev-1", "ev-2", "ev-3"]).await.unwrap();
        assert_eq!(found, ["ev-1".to_owned(), "ev-2".to_owned()].into());
        assert!(kv.applied("b", &["ev-1"]).await.unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_inbox_survives_a_reopen_and_is_swept_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.redb");
        {
            let kv = FileKv::open(&path).unwrap();
            assert!(
                kv.applied("a", &["ev-1"]).await.unwrap().is_empty(),
                "a new store"
            );
            let write = || {
                vec![KvWrite {
                    key: "k".into(),
                    value: Some(b"1".to_vec()),
                    ttl: None,
                }]
            };
            kv.apply("a", write(), vec!["old".into()], 1_000)
                .await
                .unwrap();
            kv.apply("a", write(), vec!["new".into()], 5_000)
                .await
                .unwrap();
            kv.apply("b", write(), vec!["old".into()], 1_000)
                .await
                .unwrap();
        }
        let kv = FileKv::open(&path).unwrap();
        assert_eq!(kv.applied("a", &["old", "new"]).await.unwrap().len(), 2);
        assert_eq!(kv.sweep_applied("a", 2_000).await.unwrap(), 1);
        assert_eq!(
            kv.applied("a", &["old", "new"]).await.unwrap(),
            ["new".to_owned()].into()
        );
        assert_eq!(kv.applied("b", &["old"]).await.unwrap().len(), 1, "b's own");
    }

    #[tokio::test]
    async fn namespaces_and_ttl() {
        let kv = MemoryKv::default();
        kv.set("a", "k", b"1".to_vec(), None).await.unwrap();
        assert_eq!(kv.get("a", "k").await.unwrap(), Some(b"1".to_vec()));
        assert_eq!(kv.get("b", "k").await.unwrap(), None);
        kv.set("a", "t", b"2".to_vec(), Some(Duration::from_millis(1)))
            .await
            .unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(kv.get("a", "t").await.unwrap(), None);
        assert!(!kv.delete("a", "t").await.unwrap());
        assert!(kv.delete("a", "k").await.unwrap());
    }
}
