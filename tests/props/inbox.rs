//! The runner's non-blocking reader of worker results, `pool::inbox::Inbox`, over a real pipe:
//! another thread writes the bytes in random pieces while the inbox pumps whatever is there.
//! It must hand out exactly the frames written, in order, stop with `Corrupt` at the first
//! thing that is not a frame a worker may send, and never reserve more than a frame's bound.

use std::io::Write;
use std::time::{Duration, Instant};

use loky_run::pool::inbox::{Inbox, Poller, Pumped};
use loky_run::pool::spawn::pipe;
use loky_run::protocol::{FrameBuf, LONG_HEADER, MAX_FRAME_LEN, long_header, tag};
use proptest::prelude::*;

use crate::alloc::largest_during;
use crate::frames::{hostile_bytes, long_len, sent_long};

/// How a stream must end for the inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Closed,
    Corrupt,
}

/// What the inbox must make of `bytes` followed by the end of the stream.
fn reference(bytes: &[u8]) -> (Vec<Vec<u8>>, End) {
    let mut frames = Vec::new();
    let mut p = 0;
    loop {
        let rest = &bytes[p..];
        if rest.len() < 4 {
            return (frames, End::Closed);
        }
        let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        if len == 0 || len > MAX_FRAME_LEN {
            return (frames, End::Corrupt);
        }
        let Some(&t) = rest.get(4) else {
            return (frames, End::Closed);
        };
        if !tag::from_worker(t) {
            return (frames, End::Corrupt);
        }
        if t == tag::LONG {
            let n = match long_len(rest) {
                None => return (frames, End::Closed),
                Some(Err(())) => return (frames, End::Corrupt),
                Some(Ok(n)) => n,
            };
            if rest.len() - LONG_HEADER < n {
                return (frames, End::Closed);
            }
            let body = &rest[LONG_HEADER..LONG_HEADER + n];
            if body[0] == tag::LONG || !tag::from_worker(body[0]) {
                return (frames, End::Corrupt);
            }
            frames.push(body.to_vec());
            p += LONG_HEADER + n;
            continue;
        }
        if rest.len() - 4 < len {
            return (frames, End::Closed);
        }
        frames.push(rest[4..4 + len].to_vec());
        p += 4 + len;
    }
}

/// Writes `bytes` into a pipe in pieces of `sizes` (cycled) from another thread, and pumps an
/// inbox on its read side until it says the stream ended. Returns the frames, the end, and
/// the largest allocation the reading side made.
fn pump_through_pipe(bytes: Vec<u8>, sizes: Vec<usize>) -> (Vec<Vec<u8>>, Pumped, usize) {
    let (r, w) = pipe().unwrap();
    let mut w = std::fs::File::from(w);
    let writer = std::thread::spawn(move || {
        let mut at = 0;
        for size in sizes.iter().cycle() {
            if at >= bytes.len() {
                break;
            }
            let end = (at + size.max(&1)).min(bytes.len());
            // The reader stops at the first garbage and closes its end: EPIPE then.
            if w.write_all(&bytes[at..end]).is_err() {
                break;
            }
            at = end;
        }
    });
    let ((got, end), largest) = largest_during(|| {
        let mut inbox = Inbox::new(r, false).unwrap();
        let mut poller = Poller::new().unwrap();
        poller.add(inbox.fd(), 1).unwrap();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        let end = loop {
            match inbox.pump(|f| got.push(f)) {
                Pumped::Open | Pumped::More => {}
                other => break other,
            }
            assert!(Instant::now() < deadline, "the inbox never saw the end");
            poller.wait(Duration::from_secs(5), |_| {}).unwrap();
        };
        drop(inbox);
        (got, end)
    });
    writer.join().unwrap();
    (got, end, largest)
}

/// Frames a worker may send: mostly small, some larger than the inbox's staging space, now
/// and then one larger than what it reads per wakeup.
fn worker_frames() -> impl Strategy<Value = Vec<u8>> {
    let payload = prop_oneof![
        8 => prop::collection::vec(any::<u8>(), 0..100),
        3 => (30_000usize..300_000, any::<u8>()).prop_map(|(n, b)| vec![b; n]),
        1 => (4_200_000usize..5_000_000).prop_map(|n| (0..n).map(|i| i as u8).collect()),
    ];
    let frame = (
        prop::sample::select(vec![tag::READY, tag::RESULTS]),
        payload,
    );
    prop::collection::vec(frame, 0..10).prop_map(|frames| {
        let mut f = FrameBuf::new();
        let mut wire = Vec::new();
        for (i, (t, p)) in frames.into_iter().enumerate() {
            f.begin(t);
            f.put_raw(&p);
            let frame = f.finish();
            if sent_long(i) {
                wire.extend_from_slice(&long_header(frame.len() - 4));
                wire.extend_from_slice(&frame[4..]);
            } else {
                wire.extend_from_slice(frame);
            }
        }
        wire
    })
}

fn sizes() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(
        prop_oneof![2 => 1usize..10, 2 => 10usize..70_000, 1 => 70_000usize..3_000_000],
        1..6,
    )
}

proptest! {
    #![proptest_config(crate::config(48))]

    #[test]
    fn the_inbox_hands_out_exactly_the_frames_written(wire in worker_frames(), sizes in sizes()) {
        let (want, _) = reference(&wire);
        let (got, end, largest) = pump_through_pipe(wire, sizes);
        prop_assert_eq!(end, Pumped::Closed);
        prop_assert_eq!(got.len(), want.len());
        prop_assert!(got == want, "frames differ");
        prop_assert!(largest <= MAX_FRAME_LEN, "allocated {largest} bytes at once");
    }

    #[test]
    fn garbage_after_frames_is_corrupt_or_a_torn_end_never_a_wrong_frame(
        wire in worker_frames(),
        garbage in hostile_bytes(),
        sizes in sizes(),
    ) {
        let bytes = [wire, garbage].concat();
        let (want, want_end) = reference(&bytes);
        let (got, end, largest) = pump_through_pipe(bytes, sizes);
        prop_assert!(got == want, "frames differ: {} got, {} expected", got.len(), want.len());
        prop_assert_eq!(end, match want_end {
            End::Closed => Pumped::Closed,
            End::Corrupt => Pumped::Corrupt,
        });
        prop_assert!(largest <= MAX_FRAME_LEN, "allocated {largest} bytes at once");
    }
}
