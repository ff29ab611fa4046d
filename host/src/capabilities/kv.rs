//! `kasm:handler/kv`: a key-value store private to each handler.
//!
//! The store is a trait so the embedded file store (with the ledger's storage) and a shared
//! store can come without touching the runtime; [`MemoryKv`] is the in-memory
//! implementation used by `kasm invoke` and by tests.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

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

#[cfg(test)]
mod tests {
    use super::*;

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
