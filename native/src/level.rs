//! One level of an entity's tiles: bucket numbers in ascending order and `nf` tiles per
//! bucket, in two flat vectors sized to what they hold (a map per level cost a 300-byte
//! node even for one bucket, and a vector per bucket its own allocation).

use std::ops::Range;

use crate::moments::Tile;

#[derive(Clone, Default)]
pub struct Level {
    buckets: Vec<i64>,
    tiles: Vec<Tile>,
}

impl Level {
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// The buckets, ascending.
    pub fn buckets(&self) -> &[i64] {
        &self.buckets
    }

    /// Bucket `i`'s tiles (`nf` of them).
    pub fn at(&self, i: usize, nf: usize) -> &[Tile] {
        &self.tiles[i * nf..(i + 1) * nf]
    }

    pub fn at_mut(&mut self, i: usize, nf: usize) -> &mut [Tile] {
        &mut self.tiles[i * nf..(i + 1) * nf]
    }

    /// Indices of the buckets in `lo..hi`.
    pub fn range(&self, lo: i64, hi: i64) -> Range<usize> {
        let a = self.buckets.partition_point(|&b| b < lo);
        let z = self.buckets.partition_point(|&b| b < hi);
        a..z.max(a)
    }

    /// `bucket`'s tiles, `nf` empty ones inserted in order when it has none yet.
    pub fn entry(&mut self, bucket: i64, nf: usize) -> &mut [Tile] {
        let i = self.buckets.partition_point(|&b| b < bucket);
        if self.buckets.get(i) != Some(&bucket) {
            self.buckets.reserve_exact(1);
            self.tiles.reserve_exact(nf);
            self.buckets.insert(i, bucket);
            let at = i * nf;
            self.tiles
                .splice(at..at, std::iter::repeat_n(Tile::empty(), nf));
        }
        self.at_mut(i, nf)
    }

    /// Sets `bucket`'s tiles (replacing any it had), in order.
    pub fn insert(&mut self, bucket: i64, tiles: Vec<Tile>) {
        let nf = tiles.len();
        let i = self.buckets.partition_point(|&b| b < bucket);
        if self.buckets.get(i) == Some(&bucket) {
            self.at_mut(i, nf).clone_from_slice(&tiles);
        } else {
            self.buckets.reserve_exact(1);
            self.tiles.reserve_exact(nf);
            self.buckets.insert(i, bucket);
            self.tiles.splice(i * nf..i * nf, tiles);
        }
    }

    /// Room for `count` more buckets, exactly.
    pub fn reserve_exact(&mut self, count: usize, nf: usize) {
        self.buckets.reserve_exact(count);
        self.tiles.reserve_exact(count * nf);
    }

    /// Drops the buckets before `floor`; returns whether any was dropped.
    pub fn drop_before(&mut self, floor: i64, nf: usize) -> bool {
        let cut = self.buckets.partition_point(|&b| b < floor);
        if cut == 0 {
            return false;
        }
        self.buckets.drain(..cut);
        self.tiles.drain(..cut * nf);
        // buckets expire one at a time: the shrink is rare and keeps no slack
        self.buckets.shrink_to_fit();
        self.tiles.shrink_to_fit();
        true
    }

    /// Tiles whose sums spilled to big integers.
    pub fn n_big(&self) -> usize {
        self.tiles.iter().filter(|t| t.is_big()).count()
    }

    /// Heap bytes this level owns.
    pub fn heap_bytes(&self) -> usize {
        self.buckets.capacity() * 8
            + self.tiles.capacity() * std::mem::size_of::<Tile>()
            + self.tiles.iter().map(Tile::heap_bytes).sum::<usize>()
    }
}
