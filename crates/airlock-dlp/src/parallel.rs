//! One large input scanned on several threads, with exactly the findings
//! of one sequential scan. Each thread scans a segment from its start; the
//! scans are then joined where they agree: a sequential scan and a scan
//! that started later decide the same candidate at some offset past the
//! cut, and from a shared candidate on they are the same scan (what a
//! candidate becomes and where the scan resumes depend only on the bytes
//! and the candidate, and the candidate starting at an offset is the same
//! from wherever the search began, as long as nothing started between). The
//! scan before a cut is carried on past it until that candidate is found;
//! where none is found near the cut, it simply goes on alone to the end (it
//! is a sequential scan) and the later segments' scans are dropped.
//!
//! No I/O of its own: the caller reads, through [`ReadAt`].

use std::collections::HashMap;

use crate::{Finding, Scanner, Stream, LOOKBACK};

/// Where a segment's scan records its candidates: from the cut on for the
/// scan carried past it, the first [`HEAD`] bytes for the scan starting
/// there.
#[derive(Debug)]
pub(crate) struct Trace {
    from: u64,
    to: u64,
    /// (candidate start, findings returned before it), in order.
    entries: Vec<(u64, usize)>,
}

impl Trace {
    pub(crate) fn record(&mut self, start: u64, returned: usize) {
        if (self.from..self.to).contains(&start) {
            self.entries.push((start, returned));
        }
    }
}

/// Bytes read per step.
const CHUNK: usize = 256 << 10;
/// How far past a cut the scans must agree; beyond, the scan before the
/// cut goes on alone (it takes a stretch this long without a shared
/// candidate, where scanning is fast anyway).
const HEAD: u64 = 1 << 20;
/// Below this many bytes per thread a second thread is not worth it.
const MIN_SEGMENT: u64 = 4 << 20;

/// Reads bytes at an offset, as `std::os::unix::fs::FileExt::read_at`:
/// fewer than asked only at the end.
pub trait ReadAt: Sync {
    /// Reads into `buf` from `offset`; the count read, 0 at the end.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize>;
}

impl ReadAt for [u8] {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

/// One segment's scan.
struct Segment<'a> {
    stream: Stream<'a>,
    findings: Vec<Finding>,
    /// Offset of the next byte to feed.
    next: u64,
    /// The candidates it decided near its start: start → findings before.
    head: HashMap<u64, usize>,
}

/// Where findings go, in order.
pub type Emit<'e> = dyn FnMut(Finding) -> std::io::Result<()> + 'e;

impl Scanner {
    /// Every finding in the `len` bytes of `input`, handed to `emit` in
    /// order of `start`, exactly as [`Scanner::scan`] would find them,
    /// using up to `threads` threads for a large input. The first
    /// segment's findings are handed on as they are found; the others'
    /// are held until their scan is joined to the one before.
    pub fn scan_parallel<R: ReadAt + ?Sized>(
        &self,
        input: &R,
        len: u64,
        threads: usize,
        emit: &mut Emit<'_>,
    ) -> std::io::Result<()> {
        let threads = threads
            .max(1)
            .min(usize::try_from(len / MIN_SEGMENT).unwrap_or(1).max(1));
        self.scan_segments(input, len, threads, emit).map(|_| ())
    }

    /// The scan on `threads` threads; whether every cut was joined (where
    /// one was not, the scan before it went on alone to the end).
    pub(crate) fn scan_segments<R: ReadAt + ?Sized>(
        &self,
        input: &R,
        len: u64,
        threads: usize,
        emit: &mut Emit<'_>,
    ) -> std::io::Result<bool> {
        let threads = threads.max(1);
        let n = threads as u64;
        let cuts: Vec<u64> = (0..n).map(|i| len / n * i).chain([len]).collect();
        let mut buf = vec![0u8; CHUNK];
        let (first, rest) = std::thread::scope(|scope| {
            let handles: Vec<_> = (1..threads)
                .map(|i| {
                    let (start, end) = (cuts[i], cuts[i + 1]);
                    scope.spawn(move || self.scan_segment(input, start, end, true))
                })
                .collect();
            let first = self.scan_segment(input, 0, 0, false).and_then(|mut seg| {
                while seg.feed(input, &mut buf, cuts[1])? {
                    seg.findings.drain(..).try_for_each(&mut *emit)?;
                }
                Ok(seg)
            });
            let rest: Vec<std::io::Result<Segment<'_>>> = handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(std::io::Error::other("a scanning thread failed")))
                })
                .collect();
            (first, rest)
        });
        let mut live = first?;
        let mut joined_all = true;
        for (i, next) in rest.into_iter().enumerate() {
            let mut next = next?;
            let cut = cuts[i + 1];
            let at_cut = live.stream.returned;
            live.stream.trace = Some(Trace {
                from: cut,
                to: u64::MAX,
                entries: Vec::new(),
            });
            // Carry the live scan past the cut, holding what it finds,
            // until it decides a candidate the next scan decided too.
            let joined = loop {
                let found = live.stream.trace.as_ref().and_then(|t| {
                    t.entries
                        .iter()
                        .find_map(|(s, k)| Some((*k, *next.head.get(s)?)))
                });
                if found.is_some() {
                    break found;
                }
                let past = live
                    .stream
                    .trace
                    .as_ref()
                    .and_then(|t| t.entries.last())
                    .map(|e| e.0);
                if past.is_some_and(|p| p >= cut + HEAD)
                    || live.next >= cut + HEAD
                    || !live.feed(input, &mut buf, len)?
                {
                    break None;
                }
            };
            live.stream.trace = None;
            let Some((kept, from)) = joined else {
                // No join: the live scan is a sequential one; it goes on
                // alone to the end.
                joined_all = false;
                live.findings.drain(..).try_for_each(&mut *emit)?;
                while live.feed(input, &mut buf, len)? {
                    live.findings.drain(..).try_for_each(&mut *emit)?;
                }
                break;
            };
            live.findings
                .drain(..)
                .take(kept.saturating_sub(at_cut))
                .try_for_each(&mut *emit)?;
            next.findings
                .drain(..)
                .skip(from)
                .try_for_each(&mut *emit)?;
            live = next;
        }
        live.stream.finish().into_iter().try_for_each(&mut *emit)?;
        Ok(joined_all)
    }

    /// Scans `[start, end)` (finishing the stream only at the input's end is
    /// the caller's business), recording its first candidates when `head`.
    fn scan_segment<R: ReadAt + ?Sized>(
        &self,
        input: &R,
        start: u64,
        end: u64,
        head: bool,
    ) -> std::io::Result<Segment<'_>> {
        let mut before = vec![0u8; usize::try_from(start.min(LOOKBACK as u64)).unwrap_or(0)];
        let at = start - before.len() as u64;
        read_full(input, &mut before, at)?;
        let mut stream = self.stream_at(start, &before);
        if head {
            stream.trace = Some(Trace {
                from: start,
                to: start + HEAD,
                entries: Vec::new(),
            });
        }
        let mut seg = Segment {
            stream,
            findings: Vec::new(),
            next: start,
            head: HashMap::new(),
        };
        let mut buf = vec![0u8; CHUNK];
        while seg.next < end && seg.feed(input, &mut buf, end)? {}
        if let Some(t) = seg.stream.trace.take() {
            // The first record of a start wins (there is only one).
            for (s, k) in t.entries {
                seg.head.entry(s).or_insert(k);
            }
        }
        Ok(seg)
    }
}

impl Segment<'_> {
    /// Feeds the next chunk, up to `end`; false when there was none.
    fn feed<R: ReadAt + ?Sized>(
        &mut self,
        input: &R,
        buf: &mut [u8],
        end: u64,
    ) -> std::io::Result<bool> {
        let want = usize::try_from(end.saturating_sub(self.next))
            .unwrap_or(usize::MAX)
            .min(buf.len());
        if want == 0 {
            return Ok(false);
        }
        let n = input.read_at(&mut buf[..want], self.next)?;
        if n == 0 {
            return Ok(false);
        }
        self.next += n as u64;
        self.findings.extend(self.stream.feed(&buf[..n]));
        Ok(true)
    }
}

fn read_full<R: ReadAt + ?Sized>(input: &R, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let n = input.read_at(&mut buf[done..], offset + done as u64)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the input ended early",
            ));
        }
        done += n;
    }
    Ok(())
}
