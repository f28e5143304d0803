//! A stable hash of bytes, for what must identify content across runs and processes (file
//! fingerprints, cached clusters): unlike `DefaultHasher`, the same on every run and platform.

/// A stable 64-bit hash of bytes (XXH3), fast enough for debug binaries of a hundred
/// megabytes: the workspace builds it optimised even in debug builds (a dependent can do the
/// same with `[profile.dev.package.xxhash-rust] opt-level = 3`).
pub fn content_hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// FNV-1a over 8-byte words: parts written one after the other hash as one stream.
#[derive(Debug)]
pub(crate) struct Hasher(u64);

impl Hasher {
    /// A hasher at the FNV offset basis.
    pub(crate) fn new() -> Hasher {
        Hasher(0xcbf29ce484222325)
    }

    /// Adds `bytes`, then their length.
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let word = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            self.0 = (self.0 ^ word).wrapping_mul(0x100000001b3);
        }
        for b in chunks.remainder() {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100000001b3);
        }
        // The length keeps "ab" + "c" apart from "a" + "bc" when parts are chained.
        self.0 = (self.0 ^ bytes.len() as u64).wrapping_mul(0x100000001b3);
    }

    /// The hash of everything written.
    pub(crate) fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_hash_is_stable_and_sees_every_byte() {
        assert_eq!(content_hash(b"orders"), content_hash(b"orders"));
        let a = vec![7u8; 4099];
        let mut b = a.clone();
        b[4098] = 8;
        assert_ne!(content_hash(&a), content_hash(&b));
        b[4098] = 7;
        b[3] = 0;
        assert_ne!(content_hash(&a), content_hash(&b));
    }
}
