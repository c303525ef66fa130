//! `protocol::FrameReader` and the payload decoders (`Cursor`, `ChunkHeader`, `ResultsHeader`):
//! whatever the bytes and however a stream splits them, the frames handed out are exactly the
//! frames written, anything else is an error, and nothing panics.

use std::io::{self, Read};

use loky_run::protocol::{
    ChunkHeader, Cursor, FrameBuf, FrameReader, LONG_HEADER, MAX_FRAME_LEN, MAX_MESSAGE_LEN,
    ResultsHeader, long_header, send, tag,
};
use proptest::prelude::*;

use crate::alloc::largest_during;

/// A stream that returns its bytes in pieces of the given sizes (cycled), with an
/// `Interrupted` error before some of them, as a pipe or socket may.
pub(crate) struct Pieces {
    data: Vec<u8>,
    pos: usize,
    sizes: Vec<usize>,
    turn: usize,
    interrupt_every: usize,
}

impl Pieces {
    pub(crate) fn new(data: Vec<u8>, sizes: Vec<usize>, interrupt_every: usize) -> Self {
        Self {
            data,
            pos: 0,
            sizes: if sizes.is_empty() { vec![1] } else { sizes },
            turn: 0,
            interrupt_every,
        }
    }
}

impl Read for Pieces {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.turn += 1;
        if self.interrupt_every > 0 && self.turn % self.interrupt_every == 0 {
            return Err(io::Error::from(io::ErrorKind::Interrupted));
        }
        let size = self.sizes[self.turn % self.sizes.len()].max(1);
        let n = size.min(buf.len()).min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Frames with any tag but `LONG` (a long frame's header, not a frame of its own); mostly
/// small payloads, now and then one larger than a read buffer.
pub(crate) fn frames(max: usize) -> impl Strategy<Value = Vec<(u8, Vec<u8>)>> {
    let payload = prop_oneof![
        8 => prop::collection::vec(any::<u8>(), 0..64),
        2 => prop::collection::vec(any::<u8>(), 64..4096),
        1 => (1usize..150_000, any::<u8>()).prop_map(|(n, b)| vec![b; n]),
    ];
    let tag = any::<u8>().prop_map(|t| if t == tag::LONG { t + 1 } else { t });
    prop::collection::vec((tag, payload), 0..max)
}

/// Whether [`encode`] sends frame `i` as a long frame (every third one: senders do so only
/// above a gigabyte, or a test's lowered limit).
pub(crate) fn sent_long(i: usize) -> bool {
    i % 3 == 2
}

/// Bytes on the wire of frame `i` with `payload`.
pub(crate) fn wire_size(i: usize, payload: &[u8]) -> usize {
    if sent_long(i) {
        LONG_HEADER + 1 + payload.len()
    } else {
        5 + payload.len()
    }
}

pub(crate) fn encode(frames: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut f = FrameBuf::new();
    let mut wire = Vec::new();
    for (i, (t, payload)) in frames.iter().enumerate() {
        f.begin(*t);
        f.put_raw(payload);
        if sent_long(i) {
            let frame = f.finish();
            wire.extend_from_slice(&long_header(frame.len() - 4));
            wire.extend_from_slice(&frame[4..]);
        } else {
            send(&mut wire, f.finish()).expect("a Vec takes every write");
        }
    }
    wire
}

/// The body a long frame's header at the start of `rest` announces: `Some(Ok(n))`, or
/// `Some(Err(()))` for a header out of bounds; `None` when `rest` is not a long frame's header
/// (or too short to tell).
pub(crate) fn long_len(rest: &[u8]) -> Option<Result<usize, ()>> {
    if rest.len() < 5 || rest[4] != tag::LONG {
        return None;
    }
    let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
    if len != 9 {
        return Some(Err(()));
    }
    let n = u64::from_le_bytes(rest.get(5..LONG_HEADER)?.try_into().unwrap());
    Some(if n == 0 || n > MAX_MESSAGE_LEN {
        Err(())
    } else {
        Ok(n as usize)
    })
}

/// Read sizes for [`Pieces`]: from one byte at a time to more than a frame.
fn sizes() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(
        prop_oneof![3 => 1usize..8, 2 => 8usize..5000, 1 => 5000usize..200_000],
        1..8,
    )
}

/// Bytes that stress a decoder: whole frames, headers announcing any length (small ones
/// most often), and raw noise, run together.
pub(crate) fn hostile_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        frames(3).prop_map(|f| encode(&f)),
        (0u32..300, any::<u8>()).prop_map(|(len, t)| {
            let mut v = len.to_le_bytes().to_vec();
            v.push(t);
            v
        }),
        any::<u32>().prop_map(|len| len.to_le_bytes().to_vec()),
        Just((MAX_FRAME_LEN as u32).to_le_bytes().to_vec()),
        Just((MAX_FRAME_LEN as u32 + 1).to_le_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 0..40),
    ];
    prop::collection::vec(piece, 0..8).prop_map(|v| v.concat())
}

/// What a `FrameReader` must make of `bytes`: the frames it holds, then `Ok(None)` at a clean
/// end (`true`) or an error (`false`).
fn reference(bytes: &[u8]) -> (Vec<Vec<u8>>, bool) {
    let mut frames = Vec::new();
    let mut p = 0;
    loop {
        let rest = &bytes[p..];
        if rest.is_empty() {
            return (frames, true);
        }
        if rest.len() < 4 {
            return (frames, false);
        }
        let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        if len == 0 || len > MAX_FRAME_LEN || rest.len() - 4 < len {
            return (frames, false);
        }
        if let Some(long) = long_len(rest) {
            let Ok(n) = long else {
                return (frames, false);
            };
            if rest.len() - LONG_HEADER < n || rest[LONG_HEADER] == tag::LONG {
                return (frames, false);
            }
            frames.push(rest[LONG_HEADER..LONG_HEADER + n].to_vec());
            p += LONG_HEADER + n;
            continue;
        }
        frames.push(rest[4..4 + len].to_vec());
        p += 4 + len;
    }
}

/// Everything a `FrameReader` hands out (tag included), and whether it ended cleanly.
fn read_all(stream: impl Read) -> (Vec<Vec<u8>>, bool) {
    let mut r = FrameReader::new(stream);
    let mut got = Vec::new();
    loop {
        match r.next_frame() {
            Ok(Some((t, payload))) => {
                let mut whole = vec![t];
                whole.extend_from_slice(payload);
                assert_eq!(whole, r.frame(), "frame() is the frame just read");
                got.push(whole);
            }
            Ok(None) => return (got, true),
            Err(_) => return (got, false),
        }
    }
}

proptest! {
    #![proptest_config(crate::config(64))]

    #[test]
    fn frame_reader_hands_out_exactly_the_frames_written(
        frames in frames(12),
        sizes in sizes(),
        interrupt_every in prop::sample::select(vec![0usize, 2, 3, 7]),
    ) {
        let wire = encode(&frames);
        let (got, clean) = read_all(Pieces::new(wire, sizes, interrupt_every));
        prop_assert!(clean);
        let want: Vec<Vec<u8>> = frames
            .iter()
            .map(|(t, p)| [&[*t][..], p].concat())
            .collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn a_cut_stream_gives_the_whole_frames_before_it_then_an_error(
        frames in frames(6),
        cut in any::<prop::sample::Index>(),
        sizes in sizes(),
    ) {
        let wire = encode(&frames);
        let cut = cut.index(wire.len() + 1);
        let (got, clean) = read_all(Pieces::new(wire[..cut].to_vec(), sizes, 0));
        let mut boundary = 0;
        let mut whole = 0;
        for (i, (_, p)) in frames.iter().enumerate() {
            if boundary + wire_size(i, p) > cut {
                break;
            }
            boundary += wire_size(i, p);
            whole += 1;
        }
        prop_assert_eq!(got.len(), whole);
        for (g, (t, p)) in got.iter().zip(&frames) {
            prop_assert_eq!(g[0], *t);
            prop_assert_eq!(&g[1..], &p[..]);
        }
        prop_assert_eq!(clean, cut == boundary, "clean end only at a frame boundary");
    }

    #[test]
    fn hostile_bytes_are_frames_or_errors_and_never_an_unbounded_allocation(
        bytes in hostile_bytes(),
        sizes in sizes(),
    ) {
        let (want, want_clean) = reference(&bytes);
        let ((got, clean), largest) =
            largest_during(|| read_all(Pieces::new(bytes.clone(), sizes, 3)));
        prop_assert_eq!(got, want);
        prop_assert_eq!(clean, want_clean);
        prop_assert!(largest <= MAX_FRAME_LEN, "allocated {largest} bytes at once");
    }

    #[test]
    fn chunk_frames_round_trip_and_a_cut_payload_never_reads_wrong(
        chunk_id in any::<u64>(),
        plugin in any::<u16>(),
        task in any::<u32>(),
        items in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..20),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut f = FrameBuf::new();
        ChunkHeader { chunk_id, plugin, task, count: items.len() as u32 }.write(&mut f);
        for item in &items {
            f.put_bytes(item);
        }
        let wire = f.finish().to_vec();
        let mut r = FrameReader::new(&wire[..]);
        let (t, payload) = r.next_frame().unwrap().unwrap();
        prop_assert_eq!(t, tag::CHUNK);

        let mut c = Cursor::new(payload);
        let h = ChunkHeader::read(&mut c).unwrap();
        prop_assert_eq!((h.chunk_id, h.plugin, h.task, h.count as usize),
            (chunk_id, plugin, task, items.len()));
        for item in &items {
            prop_assert_eq!(c.bytes().unwrap(), &item[..]);
        }
        prop_assert!(c.rest().is_empty());

        // Cut anywhere: what can be read is what was written, then an error.
        let cut = cut.index(payload.len());
        let mut c = Cursor::new(&payload[..cut]);
        match ChunkHeader::read(&mut c) {
            Err(_) => prop_assert!(cut < 18),
            Ok(h) => {
                prop_assert_eq!((h.chunk_id, h.count as usize), (chunk_id, items.len()));
                let mut failed = false;
                for item in &items {
                    match c.bytes() {
                        Ok(b) => prop_assert_eq!(b, &item[..]),
                        Err(_) => {
                            failed = true;
                            break;
                        }
                    }
                }
                prop_assert!(failed, "a cut payload cannot hold every item");
            }
        }
    }

    #[test]
    fn results_frames_round_trip(
        chunk_id in any::<u64>(),
        first in any::<u32>(),
        busy_ns in any::<u64>(),
        rss in any::<u64>(),
        items in prop::collection::vec((any::<u8>(), prop::collection::vec(any::<u8>(), 0..300)), 0..20),
    ) {
        let mut f = FrameBuf::new();
        ResultsHeader { chunk_id, first, count: items.len() as u32, busy_ns, rss, flags: 0 }.write(&mut f);
        for (status, bytes) in &items {
            f.put_u8(*status);
            f.put_bytes(bytes);
        }
        let wire = f.finish().to_vec();
        let mut r = FrameReader::new(&wire[..]);
        let (t, payload) = r.next_frame().unwrap().unwrap();
        prop_assert_eq!(t, tag::RESULTS);
        let mut c = Cursor::new(payload);
        let h = ResultsHeader::read(&mut c).unwrap();
        prop_assert_eq!((h.chunk_id, h.first, h.count as usize, h.busy_ns, h.rss),
            (chunk_id, first, items.len(), busy_ns, rss));
        for (status, bytes) in &items {
            prop_assert_eq!(c.u8().unwrap(), *status);
            prop_assert_eq!(c.bytes().unwrap(), &bytes[..]);
        }
        prop_assert!(c.rest().is_empty());
    }

    /// Any sequence of reads over any bytes: values or errors, never a panic, never past the
    /// end, and an error consumes nothing.
    #[test]
    fn cursor_reads_over_garbage_are_values_or_errors(
        bytes in prop::collection::vec(any::<u8>(), 0..200),
        ops in prop::collection::vec(0u8..8, 0..40),
    ) {
        let mut c = Cursor::new(&bytes);
        let mut consumed = 0usize;
        for op in ops {
            let before = c.rest().len();
            let ok = match op {
                0 => c.u8().is_ok(),
                1 => c.u16().is_ok(),
                2 => c.u32().is_ok(),
                3 => c.u64().is_ok(),
                4 => c.bytes().is_ok(),
                5 => ChunkHeader::read(&mut c).is_ok(),
                6 => ResultsHeader::read(&mut c).is_ok(),
                _ => { let _ = c.rest(); true }
            };
            let after = c.rest().len();
            prop_assert!(after <= before);
            if !ok && op < 4 {
                prop_assert_eq!(after, before, "a failed read takes nothing");
            }
            consumed += before - after;
        }
        prop_assert_eq!(consumed + c.rest().len(), bytes.len());
    }
}
