//! The frame cache: encoded frames (vision output + the prompt prefix's KV) keyed by the hash of
//! the image's bytes, least recently used evicted first, bounded by count and by bytes. A second
//! question about the same image skips the vision tower and the prefix prefill, as
//! [`st::engine::Engine::ask`] on one [`Frame`] does.

use st::engine::Frame;
use std::collections::HashMap;

/// The server's cache of encoded frames.
pub type FrameCache = BoundedCache<Frame>;

/// Host memory a frame holds: its pixel values, the vision output and the prefix KV.
pub fn frame_bytes(frame: &Frame) -> usize {
    let f32s = frame.image.pixel_values.len() + frame.embeds.len();
    f32s * std::mem::size_of::<f32>() + frame.prefix_kv_bytes()
}

struct Entry<V> {
    value: V,
    bytes: usize,
    last_used: u64,
}

/// A bounded LRU map from image hash to frame (generic so its bounds are tested without a model).
pub struct BoundedCache<V> {
    max_count: usize,
    max_bytes: usize,
    entries: HashMap<blake3::Hash, Entry<V>>,
    bytes: usize,
    tick: u64,
}

impl<V: Clone> BoundedCache<V> {
    /// `max_count` 0 turns caching off.
    pub fn new(max_count: usize, max_bytes: usize) -> Self {
        Self { max_count, max_bytes, entries: HashMap::new(), bytes: 0, tick: 0 }
    }

    pub fn get(&mut self, key: &blake3::Hash) -> Option<V> {
        self.tick += 1;
        let e = self.entries.get_mut(key)?;
        e.last_used = self.tick;
        Some(e.value.clone())
    }

    /// Keep `value` of `bytes` (one larger than the whole byte bound is not kept), evicting the
    /// least recently used until both bounds hold.
    pub fn insert(&mut self, key: blake3::Hash, value: V, bytes: usize) {
        if self.max_count == 0 || bytes > self.max_bytes {
            return;
        }
        self.tick += 1;
        if let Some(old) = self.entries.insert(key, Entry { value, bytes, last_used: self.tick }) {
            self.bytes -= old.bytes;
        }
        self.bytes += bytes;
        while self.entries.len() > self.max_count || self.bytes > self.max_bytes {
            let Some(oldest) = self.entries.iter().min_by_key(|(_, e)| e.last_used).map(|(k, _)| *k) else { break };
            if let Some(e) = self.entries.remove(&oldest) {
                self.bytes -= e.bytes;
            }
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u8) -> blake3::Hash {
        blake3::hash(&[i])
    }

    #[test]
    fn evicts_the_least_recently_used_to_hold_both_bounds() {
        let mut c = BoundedCache::new(2, 100);
        c.insert(key(1), 1, 10);
        c.insert(key(2), 2, 10);
        assert_eq!(c.get(&key(1)), Some(1)); // 2 is now the oldest
        c.insert(key(3), 3, 10);
        assert_eq!((c.len(), c.get(&key(2))), (2, None));
        c.insert(key(4), 4, 85); // three over the count: 1, now the oldest, goes
        assert_eq!((c.bytes(), c.get(&key(1)), c.get(&key(3))), (95, None, Some(3)));
        c.insert(key(5), 5, 101); // larger than the byte bound: not kept, nothing evicted
        assert_eq!((c.get(&key(5)), c.len()), (None, 2));
        c.insert(key(6), 6, 50); // over both bounds: 4 (the oldest, 85 bytes) goes
        assert_eq!((c.get(&key(4)), c.get(&key(6)), c.bytes()), (None, Some(6), 60));
        c.insert(key(6), 7, 5); // replacing keeps the byte count right
        assert_eq!((c.get(&key(6)), c.bytes(), c.len()), (Some(7), 15, 2));
    }

    #[test]
    fn count_zero_caches_nothing() {
        let mut c = BoundedCache::new(0, 100);
        c.insert(key(1), 1, 1);
        assert!(c.is_empty());
    }
}
