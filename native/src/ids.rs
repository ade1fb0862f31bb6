//! The event ids an entity remembers for deduplication, with their event times. Most
//! entities hold a few: a vector sized to them, scanned; past `SMALL` ids a hash map (an
//! empty-ish hash map costs ~300 bytes, more than the ids of a typical card).

use std::collections::HashMap;

const SMALL: usize = 32;

const _: () = assert!(std::mem::size_of::<Ids>() == 24);

#[derive(Clone, Debug)]
pub enum Ids {
    Few(Vec<(u64, i64)>),
    // boxed: the enum, so every state, stays the size of a vector
    #[allow(clippy::box_collection)]
    Many(Box<HashMap<u64, i64>>),
}

impl Default for Ids {
    fn default() -> Ids {
        Ids::Few(Vec::new())
    }
}

impl Ids {
    pub fn len(&self) -> usize {
        match self {
            Ids::Few(v) => v.len(),
            Ids::Many(m) => m.len(),
        }
    }

    pub fn contains(&self, h: u64) -> bool {
        match self {
            Ids::Few(v) => v.iter().any(|&(x, _)| x == h),
            Ids::Many(m) => m.contains_key(&h),
        }
    }

    /// Remembers `h` at `ts` (replacing its time if it was known).
    pub fn insert(&mut self, h: u64, ts: i64) {
        match self {
            Ids::Few(v) => {
                if let Some(e) = v.iter_mut().find(|e| e.0 == h) {
                    e.1 = ts;
                } else if v.len() < SMALL {
                    v.reserve_exact(1);
                    v.push((h, ts));
                } else {
                    let mut m: HashMap<u64, i64> = v.drain(..).collect();
                    m.insert(h, ts);
                    *self = Ids::Many(Box::new(m));
                }
            }
            Ids::Many(m) => {
                m.insert(h, ts);
            }
        }
    }

    /// Forgets the ids older than `floor`.
    pub fn retain_from(&mut self, floor: i64) {
        match self {
            Ids::Few(v) => {
                let before = v.len();
                v.retain(|&(_, ts)| ts >= floor);
                if v.len() < before {
                    v.shrink_to_fit();
                }
            }
            Ids::Many(m) => {
                m.retain(|_, ts| *ts >= floor);
                if m.len() <= SMALL / 2 {
                    let mut v: Vec<(u64, i64)> = m.drain().collect();
                    v.shrink_to_fit();
                    *self = Ids::Few(v);
                }
            }
        }
    }

    /// `(id, event time)` pairs, in no order.
    pub fn pairs(&self) -> Vec<(u64, i64)> {
        match self {
            Ids::Few(v) => v.clone(),
            Ids::Many(m) => m.iter().map(|(&h, &ts)| (h, ts)).collect(),
        }
    }

    /// Heap bytes held (a hash map's slots and control bytes).
    pub fn heap_bytes(&self) -> usize {
        match self {
            Ids::Few(v) => v.capacity() * 16,
            Ids::Many(m) => {
                std::mem::size_of::<HashMap<u64, i64>>()
                    + (m.capacity() * 8 / 7).next_power_of_two() * 17
                    + 16
            }
        }
    }
}

impl FromIterator<(u64, i64)> for Ids {
    fn from_iter<I: IntoIterator<Item = (u64, i64)>>(iter: I) -> Ids {
        let mut ids = Ids::default();
        for (h, ts) in iter {
            ids.insert(h, ts);
        }
        ids
    }
}
