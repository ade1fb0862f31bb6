//! Finalize straight from state bytes (serving): no decode, no allocation per tile. The
//! same arithmetic, in the same order, as `Spec::finalize` over a read-only decode; the
//! tests hold the two (and the Python engine) equal bit for bit.

use crate::engine::{read_header, tile_components, Acc, Error, Spec, Val, HEAD};

fn u32_at(d: &[u8], p: usize) -> u32 {
    u32::from_le_bytes(d[p..p + 4].try_into().unwrap())
}

fn f64_at(d: &[u8], p: usize) -> f64 {
    f64::from_le_bytes(d[p..p + 8].try_into().unwrap())
}

fn fdiv(a: i64, b: i64) -> i64 {
    a.div_euclid(b)
}

struct Level {
    count: usize,
    buckets: usize, // offset of the u32 bucket offsets
    ns: usize,      // offset of the u32 counts
    comps: usize,   // offset of the f64 components [f][ci][i]
}

pub struct View<'a> {
    data: &'a [u8],
    ms: Option<i64>,
    last: Option<i64>,
    n_raw: usize,
    raw_ts: usize,
    raw_vals: usize,
    levels: Vec<Level>,
}

impl View<'_> {
    /// Tiles stored per level.
    pub fn tile_counts(&self) -> Vec<usize> {
        self.levels.iter().map(|l| l.count).collect()
    }

    fn raw_ts(&self, k: usize) -> i64 {
        self.ms.unwrap_or(0) - u32_at(self.data, self.raw_ts + 4 * k) as i64
    }

    fn bisect(&self, x: i64) -> usize {
        // raw times ascend (their offsets descend)
        let (mut lo, mut hi) = (0, self.n_raw);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.raw_ts(mid) < x {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

impl Spec {
    pub fn view<'a>(&self, data: &'a [u8]) -> Result<View<'a>, Error> {
        let head = read_header(data)?;
        if head.crc != self.crc {
            return Err(Error::Value(format!(
                "state: written for other {} definitions (layout {:08x}, running {:08x}); \
                 rebuild it with a backfill",
                self.entity, head.crc, self.crc
            )));
        }
        let bad = || {
            Error::Value(format!(
                "state: {} bytes do not match its header; the state is corrupt",
                data.len()
            ))
        };
        let (n_raw, n_ids) = (head.n_raw, head.n_ids);
        let nl = self.hops.len();
        let nf = self.nf;
        if data.len() < HEAD + 4 * nl {
            return Err(bad());
        }
        let mut pos = HEAD + 4 * nl;
        let raw_ts = pos;
        pos += 4 * n_raw;
        let raw_vals = pos;
        pos += 8 * nf * n_raw + 12 * n_ids;
        let mut levels = Vec::with_capacity(nl);
        for j in 0..nl {
            let count = u32_at(data, HEAD + 4 * j) as usize;
            let width = self.needs[j].len();
            let lv = Level {
                count,
                buckets: pos,
                ns: pos + 4 * count,
                comps: pos + 8 * count,
            };
            pos += 8 * count + 8 * nf * width * count;
            levels.push(lv);
        }
        if pos != data.len() {
            return Err(bad());
        }
        Ok(View {
            data,
            ms: head.max_seen,
            last: head.last_before_raw,
            n_raw,
            raw_ts,
            raw_vals,
            levels,
        })
    }

    /// `finalize(decode(data, readonly=True), t)`, read in place.
    pub fn finalize_view(&self, v: &View<'_>, t: i64) -> Result<Vec<Val>, Error> {
        let mut out = vec![Val::F(f64::NAN); self.n_names];
        self.check_age(v.ms, t)?;
        let nf = self.nf;
        let d = v.data;
        let mut found: Vec<(usize, usize)> = Vec::with_capacity(32); // (level, index)
        for g in &self.groups {
            let mut acc_small = [Acc::new(); 4];
            let mut acc_vec;
            let accs: &mut [Acc] = if nf <= 4 {
                &mut acc_small[..nf]
            } else {
                acc_vec = vec![Acc::new(); nf];
                &mut acc_vec[..]
            };
            if let Some(ms) = v.ms {
                found.clear();
                let cursor = self.window_parts(g, t, |j, lo, hi| {
                    let lv = &v.levels[j];
                    let cur = fdiv(ms, self.hops[j]);
                    for i in 0..lv.count {
                        let b = cur - u32_at(d, lv.buckets + 4 * i) as i64;
                        if lo <= b && b < hi {
                            found.push((j, i));
                        }
                    }
                });
                let i0 = v.bisect(cursor);
                let i1 = v.bisect(t);
                let need_m2 = g.need_m2;
                for (f, acc) in accs.iter_mut().enumerate() {
                    for &(j, i) in &found {
                        let lv = &v.levels[j];
                        let nb = u32_at(d, lv.ns + 4 * i) as u64;
                        let needs = &self.needs[j];
                        let width = needs.len();
                        let (sb, m2b, tmin, tmax) = tile_components(needs, |ci| {
                            f64_at(d, lv.comps + 8 * ((f * width + ci) * lv.count + i))
                        });
                        acc.merge(nb, sb, m2b, tmin, tmax, need_m2);
                    }
                    for k in i0..i1 {
                        acc.add(f64_at(d, v.raw_vals + 8 * (f * v.n_raw + k)), need_m2);
                    }
                }
            }
            for &(pos, op, fidx) in &g.outputs {
                out[pos] = accs[fidx].finalize(op);
            }
        }
        if let Some(pos) = self.since_last {
            let i = v.bisect(t);
            let mut last = v.last;
            if i > 0 {
                let r = v.raw_ts(i - 1);
                if last.is_none_or(|l| r > l) {
                    last = Some(r);
                }
            }
            out[pos] = match last {
                None => Val::F(f64::NAN),
                Some(l) => Val::F((t - l) as f64 / 1000.0),
            };
        }
        Ok(out)
    }
}
