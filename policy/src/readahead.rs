//! Sequential readahead: how far ahead of a reader to fetch, from the chunks its
//! reads touch.
//!
//! The window starts at one chunk on a read from the start of a file, doubles each
//! time the reader moves into a new chunk, stops at `max_window`, and closes on a
//! seek. The window counts chunks on their way, not chunks already fetched:
//! parallel fetches finish out of order, and a reader waiting for the oldest one
//! would otherwise leave the store idle behind the ones that arrived early. Fetched
//! chunks wait in RAM up to twice the window ahead of the reader.
//!
//! A read counts as sequential when it starts within the window around the last
//! chunk touched: mmap loaders and the kernel's own readahead send page-sized or
//! readahead-sized requests slightly out of order, and they must not look like
//! seeks.

use std::ops::Range;

/// How far ahead of the reader, in windows, fetched chunks may wait for it.
pub const REACH: u64 = 2;

/// What the readahead knows about one open file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadaheadState {
    /// One past the highest chunk a sequential read has touched.
    pub next_chunk: u64,
    /// Chunks to keep fetched ahead of the reader.
    pub window: u64,
    /// Whether any read has been seen.
    pub primed: bool,
}

/// The outcome of one read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadaheadPlan {
    pub state: ReadaheadState,
    /// Chunks that may be fetched ahead, past the ones the read itself needs:
    /// the first `state.window` of them that are not fetched already.
    pub prefetch: Range<u64>,
    /// The read was a seek that closed the window.
    pub reset: bool,
}

/// Plans readahead for a read that touches chunks `first..=last` of a file of
/// `chunk_count` chunks.
pub fn plan_readahead(
    state: ReadaheadState,
    first: u64,
    last: u64,
    chunk_count: u64,
    max_window: u64,
) -> ReadaheadPlan {
    let sequential = if state.primed {
        first + state.window + 1 >= state.next_chunk && first <= state.next_chunk + state.window
    } else {
        first == 0
    };
    let reset = state.primed && !sequential && state.window > 0;
    let window = if !sequential {
        0
    } else if !state.primed || last >= state.next_chunk {
        // Open at one chunk, then double each time the reader enters a new chunk.
        (if state.window == 0 {
            1
        } else {
            state.window * 2
        })
        .min(max_window)
    } else {
        state.window
    };
    let next_chunk = if sequential {
        state.next_chunk.max(last + 1)
    } else {
        last + 1
    };
    let start = (last + 1).min(chunk_count);
    let end = (last + 1 + REACH * window).min(chunk_count);
    ReadaheadPlan {
        state: ReadaheadState {
            next_chunk,
            window,
            primed: true,
        },
        prefetch: start..end,
        reset,
    }
}

/// Chunks of the kernel's page cache of a file that its sequential reader has
/// left behind for good, from `dropped_below` (where the last such range ended)
/// on: those before the window the reader may still step back into (see
/// [`plan_readahead`]), less `lag` more chunks for requests the kernel's own
/// readahead sent ahead of the reader. Empty until the reader has read two
/// chunks in a row, and after a seek.
pub fn page_cache_behind(state: ReadaheadState, dropped_below: u64, lag: u64) -> Range<u64> {
    if !state.primed || state.window < 2 {
        return dropped_below..dropped_below;
    }
    let end = state.next_chunk.saturating_sub(state.window + 1 + lag);
    dropped_below..end.max(dropped_below)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(reads: &[(u64, u64)], max: u64) -> Vec<ReadaheadPlan> {
        let mut state = ReadaheadState::default();
        reads
            .iter()
            .map(|&(first, last)| {
                let plan = plan_readahead(state, first, last, 100, max);
                state = plan.state;
                plan
            })
            .collect()
    }

    #[test]
    fn window_grows_on_sequential_reads_and_stops_at_the_maximum() {
        let plans = run(&[(0, 0), (1, 1), (2, 2), (3, 3), (4, 4), (5, 5)], 8);
        let windows: Vec<u64> = plans.iter().map(|p| p.state.window).collect();
        assert_eq!(windows, [1, 2, 4, 8, 8, 8]);
        assert_eq!(plans[0].prefetch, 1..3);
        assert_eq!(plans[2].prefetch, 3..11);
        assert_eq!(plans[5].prefetch, 6..22);
    }

    #[test]
    fn small_reads_inside_one_chunk_keep_the_window() {
        let plans = run(&[(0, 0), (0, 0), (0, 0), (1, 1), (1, 1)], 8);
        let windows: Vec<u64> = plans.iter().map(|p| p.state.window).collect();
        assert_eq!(windows, [1, 1, 1, 2, 2]);
    }

    #[test]
    fn out_of_order_requests_inside_the_window_are_sequential() {
        // Kernel readahead: the request for chunk 3 overtakes the one for chunk 2.
        let plans = run(&[(0, 0), (1, 1), (3, 3), (2, 2), (4, 4)], 16);
        assert!(plans.iter().all(|p| !p.reset));
        assert_eq!(plans[4].state.window, 8);
    }

    #[test]
    fn a_seek_closes_the_window_and_random_reads_get_none() {
        let plans = run(&[(0, 0), (1, 1), (50, 50), (10, 10), (70, 70)], 8);
        assert!(plans[2].reset);
        assert_eq!(plans[2].prefetch, 51..51);
        assert!(plans[3..].iter().all(|p| p.prefetch.is_empty()));
        // A first read in the middle of a file is not sequential.
        assert!(run(&[(40, 40)], 8)[0].prefetch.is_empty());
    }

    #[test]
    fn a_reader_that_resumes_sequentially_reopens_the_window() {
        let plans = run(&[(0, 0), (60, 60), (61, 61), (62, 62)], 8);
        assert_eq!(plans[1].state.window, 0);
        assert_eq!(plans[2].state.window, 1);
        assert_eq!(plans[3].state.window, 2);
    }

    proptest! {
        #[test]
        fn prefetch_stays_in_the_file_past_the_read_and_within_the_window(
            reads in proptest::collection::vec((0u64..120, 0u64..3), 1..40),
            max in 1u64..32,
        ) {
            let mut state = ReadaheadState::default();
            for (first, extra) in reads {
                let last = first + extra;
                let plan = plan_readahead(state, first, last, 100, max);
                prop_assert!(plan.state.window <= max);
                prop_assert!(plan.prefetch.start > last || plan.prefetch.is_empty());
                prop_assert!(plan.prefetch.end <= 100);
                prop_assert!(plan.prefetch.end - plan.prefetch.start.min(plan.prefetch.end) <= REACH * plan.state.window);
                state = plan.state;
            }
        }
    }

    #[test]
    fn a_sequential_reader_leaves_chunks_behind_its_window_and_lag() {
        let plans = run(&[(0, 0), (1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 6)], 2);
        let behind: Vec<Range<u64>> = plans
            .iter()
            .map(|p| page_cache_behind(p.state, 0, 2))
            .collect();
        // Window 1, then 2 from the second chunk on: chunks up to next_chunk - 5.
        assert_eq!(behind, [0..0, 0..0, 0..0, 0..0, 0..0, 0..1, 0..2]);
        assert_eq!(page_cache_behind(plans[6].state, 1, 2), 1..2);
        assert_eq!(page_cache_behind(plans[6].state, 5, 2), 5..5);
    }

    #[test]
    fn random_readers_leave_nothing_behind() {
        let plans = run(
            &[(0, 0), (1, 1), (2, 2), (3, 3), (9, 9), (3, 3), (40, 40)],
            4,
        );
        for p in &plans[4..] {
            assert!(page_cache_behind(p.state, 0, 1).is_empty(), "{p:?}");
        }
    }

    proptest! {
        /// Whatever the reads, what is left behind never reaches a chunk the
        /// reader may still read as part of its sequential run, nor goes back
        /// before what was dropped already.
        #[test]
        fn never_drops_what_a_sequential_reader_may_still_read(
            reads in proptest::collection::vec((0u64..64, 0u64..3), 1..40),
            max in 1u64..16,
            lag in 0u64..4,
            dropped in 0u64..64,
        ) {
            let mut state = ReadaheadState::default();
            for (first, extra) in reads {
                let last = (first + extra).min(63);
                let plan = plan_readahead(state, first, last, 64, max);
                state = plan.state;
                let behind = page_cache_behind(state, dropped, lag);
                prop_assert_eq!(behind.start, dropped);
                prop_assert!(behind.end >= behind.start);
                if !behind.is_empty() {
                    // The lowest chunk the next read may touch and still count
                    // as sequential, less the lag.
                    let lowest = (state.next_chunk).saturating_sub(state.window + 1);
                    prop_assert!(behind.end + lag <= lowest);
                }
            }
        }
    }
}
