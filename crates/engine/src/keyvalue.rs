//! `wasi:keyvalue` (store, atomics, batch; 0.2.0-draft, the version
//! Wasmtime 48's `wasmtime-wasi-keyvalue` implements) behind wasmcell's own
//! stores. Wasmtime's in-memory store serves only the empty bucket and gives
//! each `open` a copy of its own; here every bucket name is its own key
//! space, and what one container writes the next one reads:
//!
//! - [`MemoryStore`]: in the shim's memory, shared by the containers the
//!   shim serves (a pod's), bounded in bytes, gone with the shim;
//! - [`RedisStore`]: a Redis server; bucket `B` is the Redis hash `B`, key `K`
//!   its field `K` (`redis-cli HGET B K`). Every call is bounded in time, and
//!   every Redis failure reaches the guest as a `wasi:keyvalue` error.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::component::{HasData, Resource, ResourceTable};

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit/keyvalue",
        world: "wasi:keyvalue/imports",
        imports: { default: async | trappable },
        with: { "wasi:keyvalue/store.bucket": super::Bucket },
        trappable_error_type: { "wasi:keyvalue/store.error" => super::KvError },
    });
}

use bindings::wasi::keyvalue::{atomics, batch, store};

/// An open bucket: a name in the container's store.
pub struct Bucket {
    name: String,
}

/// A store call's failure, as the guest will see it.
#[derive(Debug)]
pub enum KvError {
    Other(String),
    /// The bucket handle is not in the guest's table (a host bug or a
    /// forged handle): the guest traps.
    Trap(wasmtime::Error),
}

impl From<wasmtime::component::ResourceTableError> for KvError {
    fn from(e: wasmtime::component::ResourceTableError) -> Self {
        KvError::Trap(e.into())
    }
}

/// Keys per `list-keys` page.
const PAGE: usize = 1000;

/// The key-value store a container's guest reaches.
#[derive(Clone)]
pub enum KvStore {
    Memory(Arc<MemoryStore>),
    Redis(Arc<RedisStore>),
}

impl std::fmt::Debug for KvStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KvStore::Memory(_) => f.write_str("KvStore::Memory"),
            KvStore::Redis(r) => write!(f, "KvStore::Redis({})", r.url),
        }
    }
}

/// The in-memory store: buckets of sorted keys, under one lock.
pub struct MemoryStore {
    inner: Mutex<Memory>,
    max_bytes: usize,
}

#[derive(Default)]
struct Memory {
    buckets: HashMap<String, BTreeMap<String, Vec<u8>>>,
    bytes: usize,
}

/// What an in-memory store may hold (keys and values): it lives in the
/// shim's heap, outside any guest's linear memory.
pub const MEMORY_STORE_MAX_BYTES: usize = 64 << 20;

impl MemoryStore {
    pub fn new(max_bytes: usize) -> Self {
        MemoryStore { inner: Mutex::new(Memory::default()), max_bytes }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Memory) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn set(&self, bucket: &str, pairs: Vec<(String, Vec<u8>)>) -> Result<(), KvError> {
        let max = self.max_bytes;
        self.with(|m| {
            let b = m.buckets.entry(bucket.to_string()).or_default();
            let freed: usize = pairs.iter().filter_map(|(k, _)| b.get(k).map(|v| k.len() + v.len())).sum();
            let added: usize = pairs.iter().map(|(k, v)| k.len() + v.len()).sum();
            let after = m.bytes - freed + added;
            if after > max {
                return Err(KvError::Other(format!(
                    "the in-memory store is full: it holds at most {max} bytes of keys and values"
                )));
            }
            for (k, v) in pairs {
                b.insert(k, v);
            }
            m.bytes = after;
            Ok(())
        })
    }

    fn delete(&self, bucket: &str, keys: &[String]) {
        self.with(|m| {
            if let Some(b) = m.buckets.get_mut(bucket) {
                for k in keys {
                    if let Some(v) = b.remove(k) {
                        m.bytes -= k.len() + v.len();
                    }
                }
            }
        })
    }

    fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        self.with(|m| m.buckets.get(bucket).and_then(|b| b.get(key).cloned()))
    }

    fn keys(&self, bucket: &str, cursor: u64) -> (Vec<String>, Option<u64>) {
        self.with(|m| {
            let Some(b) = m.buckets.get(bucket) else { return (Vec::new(), None) };
            let start = usize::try_from(cursor).unwrap_or(usize::MAX);
            let keys: Vec<String> = b.keys().skip(start).take(PAGE).cloned().collect();
            let next = start.saturating_add(keys.len());
            (keys, (next < b.len()).then_some(next as u64))
        })
    }

    fn increment(&self, bucket: &str, key: &str, delta: u64) -> Result<u64, KvError> {
        let max = self.max_bytes;
        self.with(|m| {
            let b = m.buckets.entry(bucket.to_string()).or_default();
            let old = b.get(key);
            let current = match old {
                None => 0,
                Some(v) => std::str::from_utf8(v).ok().and_then(|s| s.parse::<u64>().ok()).ok_or_else(|| {
                    KvError::Other(format!("the value of {key:?} is not a decimal number, so it cannot be incremented"))
                })?,
            };
            let new = current.checked_add(delta).ok_or_else(|| KvError::Other("increment overflows u64".into()))?;
            let value = new.to_string().into_bytes();
            let after = m.bytes - old.map_or(0, |v| key.len() + v.len()) + key.len() + value.len();
            if after > max {
                return Err(KvError::Other(format!("the in-memory store is full: it holds at most {max} bytes")));
            }
            b.insert(key.to_string(), value);
            m.bytes = after;
            Ok(new)
        })
    }
}

/// How long one Redis call may take, connecting included.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// A Redis server, connected to on first use and reconnected after a
/// failure.
pub struct RedisStore {
    url: String,
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
}

impl RedisStore {
    /// Checks the URL; connects only when the guest first uses the store.
    pub fn new(url: &str) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("{url}: {e}"))?;
        Ok(RedisStore { url: url.to_string(), client, conn: tokio::sync::Mutex::new(None) })
    }

    async fn query<T: redis::FromRedisValue + Send>(&self, cmd: &redis::Cmd) -> Result<T, KvError> {
        let url = &self.url;
        let run = async {
            let mut slot = self.conn.lock().await;
            let mut conn = match slot.as_ref() {
                Some(c) => c.clone(),
                None => {
                    let c = self.client.get_multiplexed_async_connection().await?;
                    *slot = Some(c.clone());
                    c
                }
            };
            drop(slot);
            let r = cmd.query_async::<T>(&mut conn).await;
            if r.as_ref().is_err_and(|e| e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error()) {
                // The next call connects afresh.
                *self.conn.lock().await = None;
            }
            r
        };
        match tokio::time::timeout(REDIS_TIMEOUT, run).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(KvError::Other(format!("redis {url}: {e}"))),
            Err(_) => {
                *self.conn.lock().await = None;
                Err(KvError::Other(format!("redis {url}: no answer within {} s", REDIS_TIMEOUT.as_secs())))
            }
        }
    }
}

/// The guest's view: its store and its resource table.
pub struct KvView<'a> {
    pub(crate) store: Option<&'a KvStore>,
    pub(crate) table: &'a mut ResourceTable,
}

impl KvView<'_> {
    fn bucket(&self, b: &Resource<Bucket>) -> Result<(KvStore, String), KvError> {
        let name = self.table.get(b)?.name.clone();
        let store = self.store.cloned().ok_or_else(|| KvError::Other("no key-value store is granted".into()))?;
        Ok((store, name))
    }
}

impl store::Host for KvView<'_> {
    async fn open(&mut self, identifier: String) -> Result<Resource<Bucket>, KvError> {
        if self.store.is_none() {
            return Err(KvError::Other("no key-value store is granted".into()));
        }
        Ok(self.table.push(Bucket { name: identifier })?)
    }

    fn convert_error(&mut self, err: KvError) -> wasmtime::Result<store::Error> {
        match err {
            KvError::Other(m) => Ok(store::Error::Other(m)),
            KvError::Trap(e) => Err(e),
        }
    }
}

impl store::HostBucket for KvView<'_> {
    async fn get(&mut self, bucket: Resource<Bucket>, key: String) -> Result<Option<Vec<u8>>, KvError> {
        match self.bucket(&bucket)? {
            (KvStore::Memory(m), b) => Ok(m.get(&b, &key)),
            (KvStore::Redis(r), b) => r.query(redis::cmd("HGET").arg(b).arg(key)).await,
        }
    }

    async fn set(&mut self, bucket: Resource<Bucket>, key: String, value: Vec<u8>) -> Result<(), KvError> {
        match self.bucket(&bucket)? {
            (KvStore::Memory(m), b) => m.set(&b, vec![(key, value)]),
            (KvStore::Redis(r), b) => r.query::<()>(redis::cmd("HSET").arg(b).arg(key).arg(value)).await,
        }
    }

    async fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> Result<(), KvError> {
        match self.bucket(&bucket)? {
            (KvStore::Memory(m), b) => {
                m.delete(&b, &[key]);
                Ok(())
            }
            (KvStore::Redis(r), b) => r.query::<()>(redis::cmd("HDEL").arg(b).arg(key)).await,
        }
    }

    async fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> Result<bool, KvError> {
        match self.bucket(&bucket)? {
            (KvStore::Memory(m), b) => Ok(m.get(&b, &key).is_some()),
            (KvStore::Redis(r), b) => r.query(redis::cmd("HEXISTS").arg(b).arg(key)).await,
        }
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<u64>,
    ) -> Result<store::KeyResponse, KvError> {
        let (keys, cursor) = match self.bucket(&bucket)? {
            (KvStore::Memory(m), b) => m.keys(&b, cursor.unwrap_or(0)),
            (KvStore::Redis(r), b) => {
                let (next, keys): (u64, Vec<String>) = r
                    .query(redis::cmd("HSCAN").arg(b).arg(cursor.unwrap_or(0)).arg("NOVALUES").arg("COUNT").arg(PAGE))
                    .await?;
                (keys, (next != 0).then_some(next))
            }
        };
        Ok(store::KeyResponse { keys, cursor })
    }

    async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for KvView<'_> {
    async fn increment(&mut self, bucket: Resource<Bucket>, key: String, delta: u64) -> Result<u64, KvError> {
        match self.bucket(&bucket)? {
            (KvStore::Memory(m), b) => m.increment(&b, &key, delta),
            (KvStore::Redis(r), b) => {
                let delta =
                    i64::try_from(delta).map_err(|_| KvError::Other("Redis increments by at most i64::MAX".into()))?;
                let v: i64 = r.query(redis::cmd("HINCRBY").arg(b).arg(key).arg(delta)).await?;
                u64::try_from(v).map_err(|_| KvError::Other(format!("the value is negative in Redis: {v}")))
            }
        }
    }
}

impl batch::Host for KvView<'_> {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Vec<u8>)>>, KvError> {
        let values: Vec<Option<Vec<u8>>> = match self.bucket(&bucket)? {
            (KvStore::Memory(m), b) => keys.iter().map(|k| m.get(&b, k)).collect(),
            (KvStore::Redis(_), _) if keys.is_empty() => Vec::new(),
            (KvStore::Redis(r), b) => r.query(redis::cmd("HMGET").arg(b).arg(&keys)).await?,
        };
        Ok(keys.into_iter().zip(values).map(|(k, v)| v.map(|v| (k, v))).collect())
    }

    async fn set_many(&mut self, bucket: Resource<Bucket>, key_values: Vec<(String, Vec<u8>)>) -> Result<(), KvError> {
        match self.bucket(&bucket)? {
            (KvStore::Memory(m), b) => m.set(&b, key_values),
            (KvStore::Redis(_), _) if key_values.is_empty() => Ok(()),
            (KvStore::Redis(r), b) => {
                let mut cmd = redis::cmd("HSET");
                cmd.arg(b);
                for (k, v) in key_values {
                    cmd.arg(k).arg(v);
                }
                r.query::<()>(&cmd).await
            }
        }
    }

    async fn delete_many(&mut self, bucket: Resource<Bucket>, keys: Vec<String>) -> Result<(), KvError> {
        match self.bucket(&bucket)? {
            (KvStore::Memory(m), b) => {
                m.delete(&b, &keys);
                Ok(())
            }
            (KvStore::Redis(_), _) if keys.is_empty() => Ok(()),
            (KvStore::Redis(r), b) => r.query::<()>(redis::cmd("HDEL").arg(b).arg(&keys)).await,
        }
    }
}

struct HasKv;

impl HasData for HasKv {
    type Data<'a> = KvView<'a>;
}

/// Adds `wasi:keyvalue` to a linker whose store data `T` gives a [`KvView`].
pub(crate) fn add_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    view: fn(&mut T) -> KvView<'_>,
) -> wasmtime::Result<()> {
    store::add_to_linker::<T, HasKv>(linker, view)?;
    atomics::add_to_linker::<T, HasKv>(linker, view)?;
    batch::add_to_linker::<T, HasKv>(linker, view)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_buckets_are_separate_and_bounded() {
        let m = MemoryStore::new(64);
        m.set("", vec![("k".into(), b"v0".to_vec())]).unwrap();
        m.set("a", vec![("k".into(), b"v1".to_vec())]).unwrap();
        assert_eq!(m.get("", "k").as_deref(), Some(&b"v0"[..]));
        assert_eq!(m.get("a", "k").as_deref(), Some(&b"v1"[..]));
        assert_eq!(m.get("b", "k"), None);
        // Replacing a value counts its new size only.
        m.set("a", vec![("k".into(), vec![0; 40])]).unwrap();
        let e = m.set("a", vec![("k2".into(), vec![0; 40])]).unwrap_err();
        assert!(matches!(e, KvError::Other(ref s) if s.contains("full")), "{e:?}");
        m.delete("a", &["k".into()]);
        m.set("a", vec![("k2".into(), vec![0; 40])]).unwrap();
        assert_eq!(m.increment("n", "c", 5).unwrap(), 5);
        assert_eq!(m.increment("n", "c", 2).unwrap(), 7);
        assert!(m.increment("a", "k2", 1).is_err());
    }

    #[test]
    fn memory_keys_page_by_cursor() {
        let m = MemoryStore::new(usize::MAX);
        let pairs: Vec<_> = (0..PAGE + 5).map(|i| (format!("k{i:05}"), vec![])).collect();
        m.set("b", pairs).unwrap();
        let (first, cursor) = m.keys("b", 0);
        assert_eq!(first.len(), PAGE);
        let (rest, end) = m.keys("b", cursor.unwrap());
        assert_eq!((rest.len(), end), (5, None));
        assert_eq!(m.keys("b", u64::MAX), (vec![], None));
    }
}
