//! Chunk arithmetic: which chunks of a file a byte range touches, and where.

/// The part of one chunk that a read needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSlice {
    pub index: u64,
    /// Offset of the wanted bytes inside the chunk.
    pub start: usize,
    pub len: usize,
}

/// How a file of a given size is cut into chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLayout {
    pub chunk_size: u64,
    pub file_size: u64,
}

impl ChunkLayout {
    pub fn new(chunk_size: u64, file_size: u64) -> Self {
        assert!(chunk_size > 0, "chunk size must be positive");
        ChunkLayout {
            chunk_size,
            file_size,
        }
    }

    pub fn chunk_count(&self) -> u64 {
        self.file_size.div_ceil(self.chunk_size)
    }

    /// Byte offset of a chunk in the file.
    pub fn chunk_start(&self, index: u64) -> u64 {
        index * self.chunk_size
    }

    /// Length of a chunk; the last one is shorter, and chunks past the end are empty.
    pub fn chunk_len(&self, index: u64) -> u64 {
        let start = self.chunk_start(index);
        self.file_size.saturating_sub(start).min(self.chunk_size)
    }

    /// The chunk slices that cover `[offset, offset + len)`, clipped to the file.
    pub fn slices(&self, offset: u64, len: u64) -> Vec<ChunkSlice> {
        let end = offset.saturating_add(len).min(self.file_size);
        let mut slices = Vec::new();
        let mut pos = offset;
        while pos < end {
            let index = pos / self.chunk_size;
            let chunk_end = (self.chunk_start(index) + self.chunk_size).min(end);
            slices.push(ChunkSlice {
                index,
                start: (pos - self.chunk_start(index)) as usize,
                len: (chunk_end - pos) as usize,
            });
            pos = chunk_end;
        }
        slices
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn edges() {
        let l = ChunkLayout::new(8, 17);
        assert_eq!(l.chunk_count(), 3);
        assert_eq!(l.chunk_len(2), 1);
        assert_eq!(l.chunk_len(3), 0);
        assert_eq!(ChunkLayout::new(8, 0).chunk_count(), 0);
        assert_eq!(ChunkLayout::new(8, 8).chunk_count(), 1);
        assert_eq!(ChunkLayout::new(8, 7).chunk_count(), 1);
        assert_eq!(
            l.slices(6, 4),
            vec![
                ChunkSlice {
                    index: 0,
                    start: 6,
                    len: 2
                },
                ChunkSlice {
                    index: 1,
                    start: 0,
                    len: 2
                }
            ]
        );
        assert!(l.slices(17, 10).is_empty());
        assert_eq!(
            l.slices(16, 100),
            vec![ChunkSlice {
                index: 2,
                start: 0,
                len: 1
            }]
        );
    }

    proptest! {
        #[test]
        fn slices_cover_the_range_exactly(
            chunk in 1u64..100, size in 0u64..2000, offset in 0u64..2100, len in 0u64..3000
        ) {
            let layout = ChunkLayout::new(chunk, size);
            let slices = layout.slices(offset, len);
            let want = offset.saturating_add(len).min(size).saturating_sub(offset.min(size));
            prop_assert_eq!(slices.iter().map(|s| s.len as u64).sum::<u64>(), want);
            let mut pos = offset;
            for s in &slices {
                prop_assert_eq!(layout.chunk_start(s.index) + s.start as u64, pos);
                prop_assert!(s.len > 0);
                prop_assert!((s.start + s.len) as u64 <= layout.chunk_len(s.index));
                pos += s.len as u64;
            }
        }

        #[test]
        fn chunk_lengths_add_up_to_the_file(chunk in 1u64..100, size in 0u64..5000) {
            let layout = ChunkLayout::new(chunk, size);
            let total: u64 = (0..layout.chunk_count()).map(|i| layout.chunk_len(i)).sum();
            prop_assert_eq!(total, size);
        }
    }
}
