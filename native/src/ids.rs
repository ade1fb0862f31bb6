//! The event ids an entity remembers for deduplication, with their event times, kept in
//! the order the state bytes list them (by time, then id): a row writes them as they are,
//! with no copy and no sort (the sort of a merchant's ~240 ids was most of its row). Most
//! entities hold a few: a vector sized to them, scanned; past `SMALL` ids a second vector
//! of the ids alone, sorted, for the membership test.

const SMALL: usize = 32;

const _: () = assert!(std::mem::size_of::<Ids>() == 24);

#[derive(Clone, Debug)]
pub enum Ids {
    /// `(event time, id)`, ascending, exact size
    Few(Vec<(i64, u64)>),
    Many(Box<Many>),
}

#[derive(Clone, Debug, Default)]
pub struct Many {
    /// `(event time, id)`, ascending
    by_time: Vec<(i64, u64)>,
    /// the same ids, ascending
    by_id: Vec<u64>,
}

impl Default for Ids {
    fn default() -> Ids {
        Ids::Few(Vec::new())
    }
}

/// Where `(ts, h)` goes in a list ascending by time then id (times mostly arrive in order:
/// the end is tried first).
fn slot(v: &[(i64, u64)], ts: i64, h: u64) -> usize {
    match v.last() {
        Some(&last) if last < (ts, h) => v.len(),
        _ => v.partition_point(|&e| e < (ts, h)),
    }
}

impl Ids {
    pub fn len(&self) -> usize {
        self.by_time().len()
    }

    /// `(event time, id)` pairs ascending: the order of the state bytes.
    pub fn by_time(&self) -> &[(i64, u64)] {
        match self {
            Ids::Few(v) => v,
            Ids::Many(m) => &m.by_time,
        }
    }

    pub fn contains(&self, h: u64) -> bool {
        match self {
            Ids::Few(v) => v.iter().any(|&(_, x)| x == h),
            Ids::Many(m) => m.by_id.binary_search(&h).is_ok(),
        }
    }

    /// Remembers `h` at `ts` (replacing its time if it was known).
    pub fn insert(&mut self, h: u64, ts: i64) {
        if self.contains(h) {
            let v = match self {
                Ids::Few(v) => v,
                Ids::Many(m) => &mut m.by_time,
            };
            let at = v.iter().position(|&(_, x)| x == h).expect("a known id");
            v.remove(at);
            let to = slot(v, ts, h);
            v.insert(to, (ts, h));
        } else {
            self.insert_new(h, ts);
        }
    }

    /// Remembers `h`, not known yet, at `ts`.
    pub fn insert_new(&mut self, h: u64, ts: i64) {
        match self {
            Ids::Few(v) if v.len() < SMALL => {
                v.reserve_exact(1);
                let at = slot(v, ts, h);
                v.insert(at, (ts, h));
            }
            Ids::Few(v) => {
                let mut by_time = std::mem::take(v);
                let at = slot(&by_time, ts, h);
                by_time.insert(at, (ts, h));
                let mut by_id: Vec<u64> = by_time.iter().map(|&(_, x)| x).collect();
                by_id.sort_unstable();
                *self = Ids::Many(Box::new(Many { by_time, by_id }));
            }
            Ids::Many(m) => {
                let at = slot(&m.by_time, ts, h);
                m.by_time.insert(at, (ts, h));
                let at = m.by_id.partition_point(|&x| x < h);
                m.by_id.insert(at, h);
            }
        }
    }

    /// Forgets the ids older than `floor`.
    pub fn retain_from(&mut self, floor: i64) {
        match self {
            Ids::Few(v) => {
                let cut = v.partition_point(|&(ts, _)| ts < floor);
                if cut > 0 {
                    v.drain(..cut);
                    // the room of a few expired ids is kept for the next ones: a card in
                    // its steady state forgets about one id per new one, and a shrink to
                    // fit then a growth by one reallocated twice per event
                    if v.capacity() > v.len() + v.len() / 4 + 1 {
                        v.shrink_to_fit();
                    }
                }
            }
            Ids::Many(m) => {
                let cut = m.by_time.partition_point(|&(ts, _)| ts < floor);
                if cut > 0 {
                    if cut * 8 > m.by_id.len() {
                        m.by_time.drain(..cut);
                        m.by_id.clear();
                        m.by_id.extend(m.by_time.iter().map(|&(_, x)| x));
                        m.by_id.sort_unstable();
                    } else {
                        for &(_, h) in &m.by_time[..cut] {
                            if let Ok(at) = m.by_id.binary_search(&h) {
                                m.by_id.remove(at);
                            }
                        }
                        m.by_time.drain(..cut);
                    }
                }
                if m.by_time.len() <= SMALL / 2 {
                    let mut v = std::mem::take(&mut m.by_time);
                    v.shrink_to_fit();
                    *self = Ids::Few(v);
                }
            }
        }
    }

    /// `(id, event time)` pairs, in no particular order.
    pub fn pairs(&self) -> Vec<(u64, i64)> {
        self.by_time().iter().map(|&(ts, h)| (h, ts)).collect()
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        match self {
            Ids::Few(v) => v.capacity() * 16,
            Ids::Many(m) => {
                std::mem::size_of::<Many>() + m.by_time.capacity() * 16 + m.by_id.capacity() * 8
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference: a map of id -> time, listed as the state bytes list it.
    fn listed(m: &std::collections::HashMap<u64, i64>) -> Vec<(i64, u64)> {
        let mut v: Vec<(i64, u64)> = m.iter().map(|(&h, &ts)| (ts, h)).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn kept_in_the_bytes_order_through_growth_and_expiry() {
        let mut ids = Ids::default();
        let mut reference = std::collections::HashMap::new();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for step in 0..5000i64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let h = x % 97; // repeats: insert replaces the time
            let ts = step / 3 - (x % 40) as i64; // out of order, ties
            ids.insert(h, ts);
            reference.insert(h, ts);
            if step % 17 == 0 {
                let floor = step / 3 - 60 + (x % 50) as i64;
                ids.retain_from(floor);
                reference.retain(|_, t| *t >= floor);
            }
            assert_eq!(ids.by_time(), &listed(&reference)[..]);
            for h in 0..97 {
                assert_eq!(ids.contains(h), reference.contains_key(&h));
            }
        }
    }
}
