//! Chunk digests: XXH3-128 of a chunk's bytes, recorded when a chunk is written
//! to the NVMe tier and checked on every read of it.

/// The digest of a whole chunk.
pub fn digest(data: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(data)
}

/// A chunk's [`digest`] taken piece by piece as the chunk arrives.
#[derive(Default)]
pub struct DigestStream(xxhash_rust::xxh3::Xxh3);

impl DigestStream {
    pub fn update(&mut self, piece: &[u8]) {
        self.0.update(piece);
    }

    /// The digest of every piece so far, joined.
    pub fn finish(&self) -> u128 {
        self.0.digest128()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn a_digest_taken_in_pieces_is_the_digest_of_the_whole(
            data in proptest::collection::vec(proptest::num::u8::ANY, 0..5000),
            cuts in proptest::collection::vec(0usize..5000, 0..6),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort_unstable();
            let mut stream = DigestStream::default();
            let mut from = 0;
            for cut in cuts.into_iter().chain([data.len()]) {
                stream.update(&data[from..cut]);
                from = cut;
            }
            proptest::prop_assert_eq!(stream.finish(), digest(&data));
        }
    }
}
