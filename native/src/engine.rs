//! `EntityLayout` (features/layout.py) run as the Python reference (features/reference_engine.py,
//! features/reference_codec.py) runs it, bit for bit.

use crate::ids::Ids;
use crate::level::Levels;
use crate::moments::Tile;
use crate::raw::Raw;

/// The window ops, named as `features.definitions.Op` names them (the layout spec
/// passes those names; an op this core lacks is refused by name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Count,
    Sum,
    Mean,
    Min,
    Max,
    Std,
}

impl Op {
    pub const ALL: [Op; 6] = [Op::Count, Op::Sum, Op::Mean, Op::Min, Op::Max, Op::Std];

    pub fn name(self) -> &'static str {
        match self {
            Op::Count => "count",
            Op::Sum => "sum",
            Op::Mean => "mean",
            Op::Min => "min",
            Op::Max => "max",
            Op::Std => "std",
        }
    }

    pub fn from_name(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.name() == name)
    }
}

/// Tile components, named as `features.layout` names them; a level stores its own subset,
/// in the order the codec lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comp {
    Sum,
    M2,
    Min,
    Max,
}

impl Comp {
    pub const ALL: [Comp; 4] = [Comp::Sum, Comp::M2, Comp::Min, Comp::Max];

    pub fn name(self) -> &'static str {
        match self {
            Comp::Sum => "sum",
            Comp::M2 => "m2",
            Comp::Min => "min",
            Comp::Max => "max",
        }
    }

    pub fn from_name(name: &str) -> Option<Comp> {
        Comp::ALL.into_iter().find(|c| c.name() == name)
    }
}

// -- state bytes, layout v1 (features/reference_codec.py documents it) ------------------------
pub const MAGIC: &[u8; 2] = b"SK";
pub const VERSION: u8 = 1;
const HAS_MAX: u8 = 1;
const HAS_LAST: u8 = 2;
/// Fixed header bytes (magic, version, flags, crc, max_seen, last_before_raw, n_raw,
/// n_ids), followed by one u32 tile count per level.
pub const HEAD: usize = 32;

/// What an update did, named as `features.layout.Outcome` values.
#[derive(Clone, Copy)]
pub enum Outcome {
    Applied = 0,
    Duplicate = 1,
    Late = 2,
}

impl Outcome {
    pub const NAMES: [&'static str; 3] = ["applied", "duplicate", "late"];
}

#[derive(Clone, Copy, Debug)]
pub enum Val {
    I(i64),
    F(f64),
}

impl Val {
    pub fn as_f64(self) -> f64 {
        match self {
            Val::I(i) => i as f64,
            Val::F(f) => f,
        }
    }
}

pub struct Group {
    pub length: i64,
    pub hop: i64,
    pub level: usize,
    pub outputs: Vec<(usize, Op, usize)>,
    pub need_m2: bool,
}

pub struct Spec {
    pub entity: String,
    pub hops: Vec<i64>,
    pub keep: Vec<i64>,
    pub horizon: i64,
    pub lateness: Option<i64>,
    pub primary: bool,
    pub nf: usize,
    pub n_names: usize,
    pub groups: Vec<Group>,
    pub since_last: Option<usize>,
    pub needs: Vec<Vec<Comp>>,
    pub crc: u32,
}

#[derive(Clone, Default)]
pub struct State {
    pub max_seen: Option<i64>,
    pub last_before_raw: Option<i64>,
    pub raw: Raw,
    pub ids: Ids,
    pub levels: Levels,
    pub readonly: bool,
    /// the raw events' field count (`raw`'s stride less one), for readers without the
    /// spec; in the padding beside `readonly`
    pub nf: u32,
}

impl State {
    /// Heap bytes this state owns beyond its own size (capacities, not lengths).
    pub fn heap_bytes(&self) -> usize {
        self.raw.heap_bytes() + self.ids.heap_bytes() + self.levels.heap_bytes()
    }
}

fn fdiv(a: i64, b: i64) -> i64 {
    a.div_euclid(b)
}

/// The float accumulator a window read merges into (`moments.acc_*`), in Python's order.
#[derive(Clone, Copy)]
pub struct Acc {
    n: u64,
    total: f64,
    mean: f64,
    m2: f64,
    mn: f64,
    mx: f64,
}

impl Acc {
    pub fn new() -> Acc {
        Acc {
            n: 0,
            total: 0.0,
            mean: 0.0,
            m2: 0.0,
            mn: f64::INFINITY,
            mx: f64::NEG_INFINITY,
        }
    }

    /// A tile's summary (Chan et al.); M2 only when a std is read.
    #[inline]
    pub fn merge(&mut self, nb: u64, sb: f64, m2b: f64, tmin: f64, tmax: f64, need_m2: bool) {
        if nb == 0 {
            return;
        }
        if need_m2 {
            let mb = sb / nb as f64;
            if self.n != 0 {
                let tot = (self.n + nb) as f64;
                let delta = mb - self.mean;
                self.mean += delta * nb as f64 / tot;
                self.m2 += m2b + delta * delta * self.n as f64 * nb as f64 / tot;
            } else {
                self.mean = mb;
                self.m2 = m2b;
            }
        }
        self.n += nb;
        self.total += sb;
        if tmin < self.mn {
            self.mn = tmin;
        }
        if tmax > self.mx {
            self.mx = tmax;
        }
    }

    /// One raw value (Welford).
    #[inline]
    pub fn add(&mut self, x: f64, need_m2: bool) {
        self.n += 1;
        self.total += x;
        if need_m2 {
            let delta = x - self.mean;
            self.mean += delta / self.n as f64;
            self.m2 += delta * (x - self.mean);
        }
        if x < self.mn {
            self.mn = x;
        }
        if x > self.mx {
            self.mx = x;
        }
    }

    pub fn finalize(&self, op: Op) -> Val {
        let n = self.n;
        match op {
            Op::Count => Val::I(n as i64),
            Op::Sum => Val::F(self.total + 0.0),
            _ if n == 0 => Val::F(f64::NAN),
            Op::Mean => Val::F(self.total / n as f64),
            Op::Min => Val::F(self.mn),
            Op::Max => Val::F(self.mx),
            Op::Std => Val::F(if self.m2 > 0.0 {
                (self.m2 / n as f64).sqrt()
            } else {
                0.0
            }),
        }
    }
}

pub enum Error {
    TooOld(String),
    Value(String),
}

/// The fixed part of a state's header (the tile counts per level follow it).
pub struct Header {
    pub crc: u32,
    pub max_seen: Option<i64>,
    pub last_before_raw: Option<i64>,
    pub n_raw: usize,
    pub n_ids: usize,
}

/// The header of state bytes of any layout; refuses what is not a state of this version.
pub fn read_header(data: &[u8]) -> Result<Header, Error> {
    if data.len() < HEAD || &data[..2] != MAGIC {
        return Err(Error::Value(format!(
            "state: {} bytes is not a skewless state (bad magic or too short)",
            data.len()
        )));
    }
    if data[2] != VERSION {
        return Err(Error::Value(format!(
            "state: version {} is not supported (expected {VERSION})",
            data[2]
        )));
    }
    let flags = data[3];
    let u32_at = |p: usize| u32::from_le_bytes(data[p..p + 4].try_into().unwrap());
    let i64_at = |p: usize| i64::from_le_bytes(data[p..p + 8].try_into().unwrap());
    Ok(Header {
        crc: u32_at(4),
        max_seen: (flags & HAS_MAX != 0).then(|| i64_at(8)),
        last_before_raw: (flags & HAS_LAST != 0).then(|| i64_at(16)),
        n_raw: u32_at(24) as usize,
        n_ids: u32_at(28) as usize,
    })
}

/// Appends a header: the fixed part, then one tile count per level.
pub fn write_header(
    out: &mut Vec<u8>,
    crc: u32,
    max_seen: Option<i64>,
    last_before_raw: Option<i64>,
    n_raw: u32,
    n_ids: u32,
    counts: impl IntoIterator<Item = u32>,
) {
    let flags = if max_seen.is_some() { HAS_MAX } else { 0 }
        | if last_before_raw.is_some() {
            HAS_LAST
        } else {
            0
        };
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(flags);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&max_seen.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&last_before_raw.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&n_raw.to_le_bytes());
    out.extend_from_slice(&n_ids.to_le_bytes());
    for c in counts {
        out.extend_from_slice(&c.to_le_bytes());
    }
}

impl Spec {
    pub fn new_state(&self) -> State {
        State {
            levels: Levels::new(self.hops.len()),
            nf: self.nf as u32,
            ..Default::default()
        }
    }

    fn fine_hop(&self) -> i64 {
        self.hops.first().copied().unwrap_or(1)
    }

    fn raw_floor(&self, ms: i64) -> i64 {
        fdiv(ms - self.horizon, self.fine_hop()) * self.fine_hop()
    }

    pub fn update(&self, st: &mut State, ts: i64, values: &[f64], txid: Option<u64>) -> Outcome {
        if self.primary {
            if let Some(h) = txid {
                if st.ids.contains(h) {
                    return Outcome::Duplicate;
                }
            }
            if let (Some(ms), Some(late)) = (st.max_seen, self.lateness) {
                if ts < ms - late {
                    return Outcome::Late;
                }
            }
        }
        let ms = match st.max_seen {
            Some(ms) if ts <= ms => ms,
            _ => {
                st.max_seen = Some(ts);
                ts
            }
        };
        let zero = [0.0];
        let values = if values.is_empty() { &zero[..] } else { values };
        let base = ms - self.horizon;
        // each level's floor (its oldest bucket kept) and this event's bucket, once
        let count = self.hops.len();
        let (mut floor_buf, mut bucket_buf) = ([0i64; 8], [0i64; 8]);
        let (mut floor_vec, mut bucket_vec) = (Vec::new(), Vec::new());
        let (floors, buckets): (&mut [i64], &mut [i64]) = if count <= 8 {
            (&mut floor_buf[..count], &mut bucket_buf[..count])
        } else {
            floor_vec.resize(count, 0);
            bucket_vec.resize(count, 0);
            (&mut floor_vec, &mut bucket_vec)
        };
        for (j, &hop) in self.hops.iter().enumerate() {
            floors[j] = fdiv(base, hop) - self.keep[j];
            buckets[j] = fdiv(ts, hop);
        }
        let kept = |j: usize| (buckets[j] >= floors[j]).then_some(buckets[j]);
        // the buckets this event opens, made room for at once, in the room of the buckets
        // the row's compaction would drop (expired at this `ms`: no window a query can
        // still ask for reads them): a card's event opens ~3 and its row dropped ~3, so
        // growing first then shrinking reallocated the tiles at nearly every event
        let levels = &mut st.levels;
        let new = (0..levels.count())
            .filter(|&j| kept(j).is_some_and(|b| !levels.has(j, b)))
            .count();
        if new > 0 {
            levels.drop_before(|j| floors[j], self.nf);
            levels.reserve_exact(new, self.nf);
        }
        for j in 0..levels.count() {
            let Some(bucket) = kept(j) else { continue };
            for (tile, &x) in levels.entry(j, bucket, self.nf).iter_mut().zip(values) {
                tile.add(x);
            }
        }
        if ts >= self.raw_floor(ms) {
            st.raw.insert(ts, values, self.nf);
        } else if st.last_before_raw.is_none_or(|l| ts > l) {
            st.last_before_raw = Some(ts);
        }
        if self.primary {
            if let Some(h) = txid {
                st.ids.insert_new(h, ts); // `contains` said no above
            }
        }
        Outcome::Applied
    }

    pub fn compact(&self, st: &mut State) {
        let Some(ms) = st.max_seen else { return };
        let floor = self.raw_floor(ms);
        if let Some(last) = st.raw.drop_before(floor, self.nf) {
            if st.last_before_raw.is_none_or(|l| last > l) {
                st.last_before_raw = Some(last);
            }
        }
        let base = ms - self.horizon;
        st.levels
            .drop_before(|j| fdiv(base, self.hops[j]) - self.keep[j], self.nf);
        st.levels.trim();
        if let Some(late) = self.lateness {
            let id_floor = ms - late;
            st.ids.retain_from(id_floor);
        }
    }

    /// Refuses a query older than the state can answer exactly.
    pub fn check_age(&self, max_seen: Option<i64>, t: i64) -> Result<(), Error> {
        match max_seen {
            Some(ms) if t < ms - self.horizon => Err(Error::TooOld(format!(
                "event_time: {t} is more than {} ms before the newest {} event in state \
                 ({ms}); it cannot be answered exactly",
                self.horizon, self.entity
            ))),
            _ => Ok(()),
        }
    }

    pub fn finalize(&self, st: &mut State, t: i64) -> Result<Vec<Val>, Error> {
        let mut out = vec![Val::F(f64::NAN); self.n_names];
        self.check_age(st.max_seen, t)?;
        let mut few = [Acc::new(); 4];
        let mut many = Vec::new();
        let accs: &mut [Acc] = if self.nf <= few.len() {
            &mut few[..self.nf]
        } else {
            many.resize(self.nf, Acc::new());
            &mut many
        };
        for g in &self.groups {
            accs.fill(Acc::new());
            if st.max_seen.is_some() {
                self.collect(st, g, t, accs);
            }
            for &(pos, op, fidx) in &g.outputs {
                out[pos] = accs[fidx].finalize(op);
            }
        }
        if let Some(pos) = self.since_last {
            out[pos] = match last_before(st, t, self.nf) {
                None => Val::F(f64::NAN),
                Some(last) => Val::F((t - last) as f64 / 1000.0),
            };
        }
        Ok(out)
    }

    /// The window of `g` at `t` as whole buckets, coarsest level first: `part(level, lo,
    /// hi)` per level with buckets `lo..hi`; returns where the raw head starts.
    pub fn window_parts(&self, g: &Group, t: i64, mut part: impl FnMut(usize, i64, i64)) -> i64 {
        let mut cursor = fdiv(t, g.hop) * g.hop - g.length;
        for j in (0..=g.level).rev() {
            let hop = self.hops[j];
            let end = fdiv(t, hop) * hop;
            if end <= cursor {
                continue;
            }
            part(j, fdiv(cursor, hop), fdiv(end, hop));
            cursor = end;
        }
        cursor
    }

    fn collect(&self, st: &mut State, g: &Group, t: i64, accs: &mut [Acc]) {
        let need_m2 = g.need_m2;
        let nf = self.nf;
        let levels = &mut st.levels;
        // the window's tiles in canonical order, each field's merged in that order
        let cursor = self.window_parts(g, t, |j, lo, hi| {
            for i in levels.range(j, lo, hi) {
                for (tile, acc) in levels.at_mut(j, i, nf).iter_mut().zip(accs.iter_mut()) {
                    if tile.n == 0 {
                        continue;
                    }
                    let (sb, m2b) = if need_m2 {
                        tile.summary()
                    } else {
                        (tile.total_cached(), 0.0)
                    };
                    acc.merge(tile.n, sb, m2b, tile.min, tile.max, need_m2);
                }
            }
        });
        let i0 = st.raw.bisect(cursor, nf);
        let i1 = st.raw.bisect(t, nf);
        for (f, acc) in accs.iter_mut().enumerate() {
            for i in i0..i1 {
                acc.add(st.raw.val(i, f, nf), need_m2);
            }
        }
    }

    pub fn as_of_last(&self, st: &mut State) -> Vec<Val> {
        let t = st.max_seen.unwrap_or(0) + 1;
        match self.finalize(st, t) {
            Ok(v) => v,
            Err(_) => unreachable!("as_of_last is never too old"),
        }
    }

    // -- codec ------------------------------------------------------------------------

    pub fn encode(&self, st: &mut State) -> Vec<u8> {
        self.compact(st);
        let ms = st.max_seen.unwrap_or(0);
        let ids = st.ids.by_time();
        let nf = self.nf;
        let n_raw = st.raw.len(nf);
        let levels = &mut st.levels;
        let tiles: usize = (self.needs.iter().enumerate())
            .map(|(j, needs)| levels.len(j) * (8 + 8 * nf * needs.len()))
            .sum();
        let size = HEAD + 4 * levels.count() + n_raw * (4 + 8 * nf) + ids.len() * 12 + tiles;
        let mut out = Vec::with_capacity(size);
        write_header(
            &mut out,
            self.crc,
            st.max_seen,
            st.last_before_raw,
            n_raw as u32,
            ids.len() as u32,
            (0..levels.count()).map(|j| levels.len(j) as u32),
        );
        for ts in st.raw.times(nf) {
            out.extend_from_slice(&((ms - ts) as u32).to_le_bytes());
        }
        for f in 0..nf {
            for i in 0..n_raw {
                out.extend_from_slice(&st.raw.val(i, f, nf).to_le_bytes());
            }
        }
        for &(ts, _) in ids {
            out.extend_from_slice(&((ms - ts) as u32).to_le_bytes());
        }
        for &(_, h) in ids {
            out.extend_from_slice(&h.to_le_bytes());
        }
        for j in 0..levels.count() {
            let count = levels.len(j);
            if count == 0 {
                continue;
            }
            let cur = fdiv(ms, self.hops[j]);
            for &b in levels.buckets(j) {
                out.extend_from_slice(&((cur - b) as u32).to_le_bytes());
            }
            for i in 0..count {
                out.extend_from_slice(&(levels.at(j, i, nf)[0].n as u32).to_le_bytes());
            }
            for f in 0..nf {
                for &comp in &self.needs[j] {
                    for i in 0..count {
                        let tile = &mut levels.at_mut(j, i, nf)[f];
                        let v = match comp {
                            Comp::Sum => tile.total_cached(),
                            Comp::M2 => tile.m2_cached(),
                            Comp::Min => tile.min,
                            Comp::Max => tile.max,
                        };
                        out.extend_from_slice(&v.to_le_bytes());
                    }
                }
            }
        }
        debug_assert_eq!(out.len(), size);
        out
    }

    pub fn decode(&self, data: &[u8], readonly: bool) -> Result<State, Error> {
        self.view(data)?; // magic, version, layout crc and length, with their messages
        let head = read_header(data)?;
        let mut r = Reader { data, pos: HEAD };
        let ms = i64::from_le_bytes(data[8..16].try_into().unwrap()); // as the codec reads it
        let (n_raw, n_ids) = (head.n_raw, head.n_ids);
        let nf = self.nf;
        let counts: Vec<usize> = (0..self.hops.len()).map(|_| r.u32() as usize).collect();
        let mut st = self.new_state();
        st.readonly = readonly;
        st.max_seen = head.max_seen;
        st.last_before_raw = head.last_before_raw;
        let raw_ts: Vec<i64> = (0..n_raw).map(|_| ms - r.u32() as i64).collect();
        let mut vals = vec![0.0; n_raw * nf];
        for f in 0..nf {
            for i in 0..n_raw {
                vals[i * nf + f] = r.f64();
            }
        }
        st.raw = Raw::from_parts(&raw_ts, &vals, nf);
        if readonly {
            r.pos += n_ids * 12;
        } else {
            let offs: Vec<i64> = (0..n_ids).map(|_| r.u32() as i64).collect();
            st.ids = offs.iter().map(|&d| (r.u64(), ms - d)).collect();
        }
        for (j, &count) in counts.iter().enumerate() {
            if count == 0 {
                continue;
            }
            let cur = fdiv(ms, self.hops[j]);
            let buckets: Vec<i64> = (0..count).map(|_| cur - r.u32() as i64).collect();
            let ns: Vec<u64> = (0..count).map(|_| r.u32() as u64).collect();
            let needs = &self.needs[j];
            let width = needs.len();
            // comps[f][ci][i]
            let mut comps = vec![0.0f64; nf * width * count];
            for v in comps.iter_mut() {
                *v = r.f64();
            }
            st.levels.reserve_exact(count, nf);
            for i in 0..count {
                let mut tiles = Vec::with_capacity(nf);
                for f in 0..nf {
                    let (sm, m2, mn, mx) =
                        tile_components(needs, |ci| comps[(f * width + ci) * count + i]);
                    tiles.push(if readonly {
                        Tile::summary_only(ns[i], sm, m2, mn, mx)
                    } else {
                        Tile::from_summary(ns[i], sm, m2, mn, mx)
                    });
                }
                st.levels.insert(j, buckets[i], tiles);
            }
        }
        Ok(st)
    }

    // -- exact snapshots (Bytewax recovery): big-integer sums survive a restart -----

    pub fn snapshot(&self, st: &State) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"SX");
        out.extend_from_slice(&self.crc.to_le_bytes());
        out.push(st.max_seen.is_some() as u8 | (st.last_before_raw.is_some() as u8) << 1);
        out.extend_from_slice(&st.max_seen.unwrap_or(0).to_le_bytes());
        out.extend_from_slice(&st.last_before_raw.unwrap_or(0).to_le_bytes());
        out.extend_from_slice(&(st.raw.len(self.nf) as u32).to_le_bytes());
        for ts in st.raw.times(self.nf) {
            out.extend_from_slice(&ts.to_le_bytes());
        }
        for v in st.raw.values(self.nf) {
            out.extend_from_slice(&v.to_le_bytes());
        }
        let mut ids = st.ids.pairs();
        ids.sort_unstable();
        out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
        for (h, ts) in ids {
            out.extend_from_slice(&h.to_le_bytes());
            out.extend_from_slice(&ts.to_le_bytes());
        }
        let levels = &st.levels;
        for j in 0..levels.count() {
            out.extend_from_slice(&(levels.len(j) as u32).to_le_bytes());
            for (i, &b) in levels.buckets(j).iter().enumerate() {
                out.extend_from_slice(&b.to_le_bytes());
                for t in levels.at(j, i, self.nf) {
                    t.write_exact(&mut out);
                }
            }
        }
        out
    }

    pub fn restore(&self, data: &[u8]) -> Result<State, Error> {
        let bad = |why: &str| {
            Error::Value(format!(
                "snapshot: {why}; not a native {} snapshot",
                self.entity
            ))
        };
        if data.len() < 7 || &data[..2] != b"SX" {
            return Err(bad("bad magic"));
        }
        if u32::from_le_bytes(data[2..6].try_into().unwrap()) != self.crc {
            return Err(bad("written for other definitions"));
        }
        let mut r = Reader { data, pos: 6 };
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let flags = r.u8();
            let ms = r.i64();
            let last = r.i64();
            let mut st = self.new_state();
            st.max_seen = if flags & 1 != 0 { Some(ms) } else { None };
            st.last_before_raw = if flags & 2 != 0 { Some(last) } else { None };
            let n_raw = r.u32() as usize;
            let raw_ts: Vec<i64> = (0..n_raw).map(|_| r.i64()).collect();
            let vals: Vec<f64> = (0..n_raw * self.nf).map(|_| r.f64()).collect();
            st.raw = Raw::from_parts(&raw_ts, &vals, self.nf);
            let n_ids = r.u32() as usize;
            st.ids = (0..n_ids).map(|_| (r.u64(), r.i64())).collect();
            for j in 0..self.hops.len() {
                let count = r.u32() as usize;
                for _ in 0..count {
                    let b = r.i64();
                    let tiles = (0..self.nf).map(|_| r.tile()).collect();
                    st.levels.insert(j, b, tiles);
                }
            }
            (st, r.pos)
        }));
        match res {
            Ok((st, pos)) if pos == data.len() => Ok(st),
            _ => Err(bad("truncated or corrupt")),
        }
    }
}

/// A serialized tile's `(sum, m2, min, max)`: the level's stored components (read by
/// `get(component index)`), defaults for the rest (as `codec.decode` fills them).
pub fn tile_components(needs: &[Comp], mut get: impl FnMut(usize) -> f64) -> (f64, f64, f64, f64) {
    let (mut sum, mut m2, mut min, mut max) = (0.0, 0.0, f64::INFINITY, f64::NEG_INFINITY);
    for (ci, &c) in needs.iter().enumerate() {
        let v = get(ci);
        match c {
            Comp::Sum => sum = v,
            Comp::M2 => m2 = v,
            Comp::Min => min = v,
            Comp::Max => max = v,
        }
    }
    (sum, m2, min, max)
}

fn last_before(st: &State, t: i64, nf: usize) -> Option<i64> {
    let i = st.raw.bisect(t, nf);
    let last = st.last_before_raw;
    if i > 0 && last.is_none_or(|l| st.raw.ts(i - 1, nf) > l) {
        return Some(st.raw.ts(i - 1, nf));
    }
    last
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let v: [u8; N] = self.data[self.pos..self.pos + N].try_into().unwrap();
        self.pos += N;
        v
    }
    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
    fn i64(&mut self) -> i64 {
        i64::from_le_bytes(self.take())
    }
    fn f64(&mut self) -> f64 {
        f64::from_le_bytes(self.take())
    }
    fn big(&mut self) -> num_bigint::BigInt {
        let n = self.u32() as usize;
        let v = num_bigint::BigInt::from_signed_bytes_le(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        v
    }
    fn tile(&mut self) -> Tile {
        let n = self.u64();
        let k = self.u64();
        let d = self.u64();
        let min = self.f64();
        let max = self.f64();
        let s1 = self.big();
        let s2 = self.big();
        Tile::from_exact(n, k, d, min, max, s1, s2, None)
    }
}
