//! The shard of an entity id (Fibonacci hashing): one definition for the router
//! (`shard.rs`) and the decoders that group a poll by shard (`decode.rs`, `block.rs`).

/// Multiplier of the shard hash (Fibonacci hashing; `flows/stream_shard.py`'s `_MIX`).
pub(crate) const MIX: u64 = 0x9E37_79B9_7F4A_7C15;

/// The shard of `id` among `1 << bits` (`bits` in 1..=16).
#[inline]
pub(crate) fn shard_of(id: i64, bits: u32) -> usize {
    ((id as u64).wrapping_mul(MIX) >> (64 - bits)) as usize
}
