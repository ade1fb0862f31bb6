//! Every level of an entity's tiles in two flat vectors sized to what they hold: the bucket
//! numbers of level 0, then of level 1, ..., each level's ascending, and `nf` tiles per
//! bucket in the same order. One pair of vectors per state rather than per level: an
//! event that opens a bucket in each of four levels grows them once, not eight times
//! (the reallocations were half of a card's update), and a row's compaction shrinks
//! them once. (A map per level cost a 300-byte node even for one bucket, and a vector
//! per bucket its own allocation.)

use std::ops::Range;

use crate::moments::Tile;

#[derive(Clone, Default)]
pub struct Levels {
    buckets: Vec<i64>,
    tiles: Vec<Tile>,
    /// where each level's buckets end in `buckets` (level `j`: `ends[j-1]..ends[j]`)
    ends: Box<[u32]>,
}

impl Levels {
    pub fn new(levels: usize) -> Levels {
        Levels {
            ends: vec![0; levels].into_boxed_slice(),
            ..Default::default()
        }
    }

    pub fn count(&self) -> usize {
        self.ends.len()
    }

    fn span(&self, j: usize) -> Range<usize> {
        let start = if j == 0 { 0 } else { self.ends[j - 1] as usize };
        start..self.ends[j] as usize
    }

    /// Level `j`'s bucket count.
    pub fn len(&self, j: usize) -> usize {
        self.span(j).len()
    }

    /// Level `j`'s buckets, ascending.
    pub fn buckets(&self, j: usize) -> &[i64] {
        &self.buckets[self.span(j)]
    }

    /// Bucket `i` of level `j`: its tiles (`nf` of them).
    pub fn at(&self, j: usize, i: usize, nf: usize) -> &[Tile] {
        let at = self.span(j).start + i;
        &self.tiles[at * nf..(at + 1) * nf]
    }

    pub fn at_mut(&mut self, j: usize, i: usize, nf: usize) -> &mut [Tile] {
        let at = self.span(j).start + i;
        &mut self.tiles[at * nf..(at + 1) * nf]
    }

    /// Indices (within level `j`) of its buckets in `lo..hi`.
    pub fn range(&self, j: usize, lo: i64, hi: i64) -> Range<usize> {
        let b = self.buckets(j);
        let a = b.partition_point(|&x| x < lo);
        let z = b.partition_point(|&x| x < hi);
        a..z.max(a)
    }

    /// Whether level `j` has `bucket`.
    pub fn has(&self, j: usize, bucket: i64) -> bool {
        let b = self.buckets(j);
        // new buckets are mostly the newest: the last one is tried first
        match b.last() {
            Some(&last) if last <= bucket => last == bucket,
            _ => b.binary_search(&bucket).is_ok(),
        }
    }

    /// Room for `count` more buckets, exactly.
    pub fn reserve_exact(&mut self, count: usize, nf: usize) {
        self.buckets.reserve_exact(count);
        self.tiles.reserve_exact(count * nf);
    }

    /// Level `j`'s tiles of `bucket`, `nf` empty ones inserted in order when it has none
    /// yet (into the room `reserve_exact` made, if the caller made it).
    pub fn entry(&mut self, j: usize, bucket: i64, nf: usize) -> &mut [Tile] {
        let span = self.span(j);
        let b = &self.buckets[span.clone()];
        let i = match b.last() {
            Some(&last) if last < bucket => b.len(),
            _ => b.partition_point(|&x| x < bucket),
        };
        let at = span.start + i;
        if i == b.len() || self.buckets[at] != bucket {
            self.buckets.insert(at, bucket);
            if nf == 1 {
                self.tiles.insert(at, Tile::empty());
            } else {
                self.tiles
                    .splice(at * nf..at * nf, std::iter::repeat_n(Tile::empty(), nf));
            }
            for e in &mut self.ends[j..] {
                *e += 1;
            }
        }
        &mut self.tiles[at * nf..(at + 1) * nf]
    }

    /// Sets level `j`'s `bucket` tiles (replacing any it had), in order.
    pub fn insert(&mut self, j: usize, bucket: i64, tiles: Vec<Tile>) {
        let nf = tiles.len();
        let i = self.buckets(j).partition_point(|&b| b < bucket);
        if self.buckets(j).get(i) == Some(&bucket) {
            self.at_mut(j, i, nf).clone_from_slice(&tiles);
            return;
        }
        let at = self.span(j).start + i;
        self.buckets.insert(at, bucket);
        self.tiles.splice(at * nf..at * nf, tiles);
        for e in &mut self.ends[j..] {
            *e += 1;
        }
    }

    /// Drops each level's buckets before `floor(j)`, keeping the room they held (an
    /// update drops them where it opens buckets; a row's compaction, then `trim`).
    pub fn drop_before(&mut self, floor: impl Fn(usize) -> i64, nf: usize) {
        // the last level first: the earlier levels' positions stay put meanwhile
        for j in (0..self.ends.len()).rev() {
            let span = self.span(j);
            let cut = self.buckets[span.clone()].partition_point(|&b| b < floor(j));
            if cut == 0 {
                continue;
            }
            self.buckets.drain(span.start..span.start + cut);
            self.tiles.drain(span.start * nf..(span.start + cut) * nf);
            for e in &mut self.ends[j..] {
                *e -= cut as u32;
            }
        }
    }

    /// Gives back the room past a quarter of slack (a row's compaction calls it). The room
    /// of a few expired buckets is kept for the next ones: a shrink to fit after each
    /// expiry, then a growth, left the heap ~3x as fragmented.
    pub fn trim(&mut self) {
        let len = self.buckets.len();
        if self.buckets.capacity() > len + len / 4 + 1 {
            self.buckets.shrink_to_fit();
            self.tiles.shrink_to_fit();
        }
    }

    /// Tiles whose sums spilled to big integers.
    pub fn n_big(&self) -> usize {
        self.tiles.iter().filter(|t| t.is_big()).count()
    }

    /// Heap bytes these levels own.
    pub fn heap_bytes(&self) -> usize {
        self.buckets.capacity() * 8
            + self.tiles.capacity() * std::mem::size_of::<Tile>()
            + self.tiles.iter().map(Tile::heap_bytes).sum::<usize>()
            + self.ends.len() * 4
    }
}
