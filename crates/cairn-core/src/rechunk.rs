//! Re-chunking only what changed: the chunks of a new version of a file that differs from its
//! base in a few places, as the base's own chunks wherever that gives the same result.
//!
//! A FastCDC cut depends only on the bytes since the previous cut. So where the new file and
//! its base agree from one of the base's cuts onwards, chunking the new file from there makes
//! the base's chunks again. [`Rechunk`] walks the base's chunks: one that the changes leave
//! alone is kept as it is ([`Step::Kept`]); from the first one they touch, the chunker runs
//! over the new bytes ([`Step::New`]) until one of its cuts lands on a cut of the base followed
//! by an untouched chunk, and keeping resumes there. The steps are exactly the chunks that
//! [`Chunker`] makes of the whole new file, while only the bytes around the changes are read.

use std::io::Read;
use std::ops::Range;

use crate::CoreError;
use crate::chunk::Chunker;

/// How a new version of a file differs from its base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes {
    /// The new file's length.
    pub len: u64,
    /// How many of the base's bytes the new file still starts with: bytes at or past this
    /// offset are new (a truncation shortens it).
    pub retained: u64,
    /// Byte ranges below `retained` whose bytes may differ from the base's (any order;
    /// overlaps are fine).
    pub changed: Vec<Range<u64>>,
}

/// One chunk of the new file, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The base's chunk with this index, unchanged.
    Kept(usize),
    /// New chunk bytes.
    New(Vec<u8>),
}

/// The chunks of a new version of a file, reusing its base's (see the module docs).
///
/// `open_at(offset)` gives the new file's bytes from `offset` on; it is called once per run of
/// changed chunks, and its reader is read no further than [`crate::chunk::MAX_CHUNK`] past the
/// last cut it yields. A reader that ends before the file's length is an error.
pub struct Rechunk<F, R>
where
    F: FnMut(u64) -> R,
    R: Read,
{
    /// The end offset of each of the base's chunks.
    ends: Vec<u64>,
    len: u64,
    retained: u64,
    /// Sorted, merged and non-empty.
    changed: Vec<Range<u64>>,
    open_at: F,
    /// Where the next step starts.
    pos: u64,
    chunker: Option<Chunker<std::io::Take<R>>>,
    failed: bool,
}

impl<F, R> std::fmt::Debug for Rechunk<F, R>
where
    F: FnMut(u64) -> R,
    R: Read,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rechunk")
            .field("pos", &self.pos)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl<F, R> Rechunk<F, R>
where
    F: FnMut(u64) -> R,
    R: Read,
{
    /// The steps of the new file described by `changes`, whose base was cut into chunks of
    /// `base_lens` bytes.
    pub fn new(base_lens: &[u32], changes: Changes, open_at: F) -> Self {
        let mut end = 0u64;
        let ends = base_lens
            .iter()
            .map(|&len| {
                end += u64::from(len);
                end
            })
            .collect();
        let mut ranges: Vec<Range<u64>> = changes
            .changed
            .into_iter()
            .filter(|r| r.start < r.end)
            .collect();
        ranges.sort_by_key(|r| r.start);
        let mut changed: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
        for r in ranges {
            match changed.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => changed.push(r),
            }
        }
        Self {
            ends,
            len: changes.len,
            retained: changes.retained,
            changed,
            open_at,
            pos: 0,
            chunker: None,
            failed: false,
        }
    }

    /// The base's chunk that starts at `pos`, if one does and the new file has it unchanged.
    fn kept_at(&self, pos: u64) -> Option<usize> {
        let index = if pos == 0 {
            0
        } else {
            self.ends.binary_search(&pos).ok()? + 1
        };
        let end = *self.ends.get(index)?;
        // The base's last chunk was cut by its end, not its content: it is the new file's
        // chunk only where the new file ends there too.
        let cut_by_content = index + 1 < self.ends.len();
        let unchanged = end <= self.retained && !self.touched(pos, end);
        (unchanged && end <= self.len && (cut_by_content || end == self.len)).then_some(index)
    }

    /// Whether a change overlaps `[start, end)`.
    fn touched(&self, start: u64, end: u64) -> bool {
        let first = self.changed.partition_point(|r| r.end <= start);
        self.changed.get(first).is_some_and(|r| r.start < end)
    }
}

impl<F, R> Iterator for Rechunk<F, R>
where
    F: FnMut(u64) -> R,
    R: Read,
{
    type Item = Result<Step, CoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.len {
            return None;
        }
        if self.chunker.is_none() {
            if let Some(index) = self.kept_at(self.pos) {
                self.pos = self.ends[index];
                return Some(Ok(Step::Kept(index)));
            }
            let reader = (self.open_at)(self.pos).take(self.len - self.pos);
            self.chunker = Some(Chunker::new(reader));
        }
        let next = self.chunker.as_mut().and_then(Iterator::next);
        match next {
            Some(Ok(chunk)) => {
                self.pos += chunk.len() as u64;
                if self.kept_at(self.pos).is_some() {
                    self.chunker = None;
                }
                Some(Ok(Step::New(chunk)))
            }
            Some(Err(e)) => {
                self.failed = true;
                Some(Err(e))
            }
            None => {
                self.failed = true;
                Some(Err(CoreError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("the new file ended at {} of {} bytes", self.pos, self.len),
                ))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::chunk::MAX_CHUNK;
    use crate::test_bytes::pseudo_random;

    fn chunks(data: &[u8]) -> Vec<Vec<u8>> {
        Chunker::new(data)
            .collect::<Result<Vec<_>, _>>()
            .expect("chunking a slice cannot fail")
    }

    /// Re-chunks `new` against `base`; returns the chunks and how many bytes were chunked anew.
    fn rechunk(
        base: &[u8],
        new: &[u8],
        retained: u64,
        changed: Vec<Range<u64>>,
    ) -> (Vec<Vec<u8>>, usize) {
        let base_chunks = chunks(base);
        let lens: Vec<u32> = base_chunks.iter().map(|c| c.len() as u32).collect();
        let changes = Changes {
            len: new.len() as u64,
            retained,
            changed,
        };
        let steps = Rechunk::new(&lens, changes, |at| &new[at as usize..])
            .collect::<Result<Vec<_>, _>>()
            .expect("rechunking a slice cannot fail");
        let mut fresh = 0;
        let out = steps
            .into_iter()
            .map(|step| match step {
                Step::Kept(i) => base_chunks[i].clone(),
                Step::New(c) => {
                    fresh += c.len();
                    c
                }
            })
            .collect();
        (out, fresh)
    }

    #[test]
    fn a_small_overwrite_rechunks_only_around_it() {
        let base = pseudo_random(24 << 20, 7);
        let mut new = base.clone();
        let at = 12 << 20;
        new[at..at + 4096].copy_from_slice(&pseudo_random(4096, 99));
        let (out, fresh) = rechunk(
            &base,
            &new,
            base.len() as u64,
            std::iter::once(at as u64..at as u64 + 4096).collect(),
        );
        assert_eq!(out, chunks(&new));
        assert!(
            fresh > 0 && fresh <= 2 * MAX_CHUNK as usize,
            "{fresh} bytes chunked anew"
        );
    }

    #[test]
    fn an_unchanged_file_keeps_every_chunk() {
        let base = pseudo_random(9 << 20, 3);
        let (out, fresh) = rechunk(&base, &base, base.len() as u64, vec![]);
        assert_eq!(out, chunks(&base));
        assert_eq!(fresh, 0);
    }

    #[test]
    fn an_append_rechunks_the_base_tail_only() {
        let base = pseudo_random(9 << 20, 5);
        let mut new = base.clone();
        new.extend_from_slice(&pseudo_random(300_000, 6));
        let (out, fresh) = rechunk(&base, &new, base.len() as u64, vec![]);
        assert_eq!(out, chunks(&new));
        let last = chunks(&base).last().map_or(0, Vec::len);
        assert!(fresh <= last + 300_000 + MAX_CHUNK as usize);
    }

    #[test]
    fn a_reader_that_ends_early_is_an_error() {
        let base = pseudo_random(3 << 20, 11);
        let lens: Vec<u32> = chunks(&base).iter().map(|c| c.len() as u32).collect();
        let changes = Changes {
            len: base.len() as u64 + 10,
            retained: base.len() as u64,
            changed: std::iter::once(0..1).collect(),
        };
        let result: Result<Vec<_>, _> =
            Rechunk::new(&lens, changes, |at| &base[at as usize..]).collect();
        assert!(result.is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Whatever the overwrites, truncation and growth, the steps are the chunks of the
        /// whole new file.
        #[test]
        fn steps_are_the_chunks_of_the_new_file(
            seed in any::<u64>(),
            base_len in 0usize..(10 << 20),
            writes in prop::collection::vec((0.0f64..1.0, 1usize..200_000), 0..4),
            cut in prop::option::of(0.0f64..1.0),
            grow in prop::option::of(1usize..3_000_000),
        ) {
            let base = pseudo_random(base_len, seed | 1);
            let mut new = base.clone();
            let mut retained = base.len() as u64;
            let mut changed = Vec::new();
            if let Some(cut) = cut {
                let to = (cut * new.len() as f64) as usize;
                new.truncate(to);
                retained = to as u64;
            }
            if let Some(grow) = grow {
                new.extend_from_slice(&pseudo_random(grow, seed ^ 0x55));
            }
            for (i, (at, len)) in writes.into_iter().enumerate() {
                if new.is_empty() {
                    break;
                }
                let at = (at * new.len() as f64) as usize;
                let end = (at + len).min(new.len());
                new[at..end].copy_from_slice(&pseudo_random(end - at, seed ^ i as u64));
                changed.push(at as u64..end as u64);
            }
            let changed: Vec<Range<u64>> = changed
                .into_iter()
                .filter(|r| r.start < retained)
                .map(|r| r.start..r.end.min(retained))
                .collect();
            let (out, _) = rechunk(&base, &new, retained, changed);
            prop_assert_eq!(out, chunks(&new));
        }
    }
}
