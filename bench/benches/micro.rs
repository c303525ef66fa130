//! Micro-benchmarks of loky-run's hot paths (divan): `cargo bench -p bench --bench micro`.
//!
//! - frames: encoding and decoding a chunk of 1,000 small inputs and a results frame of 1,000
//!   outputs (`loky_run::protocol`), and reading frames from a byte stream;
//! - input: encoding a range into a chunk (`loky_run::input::open`);
//! - dispatch: building a chunk as the stage dispatcher does (input encoding, the copy of the
//!   frame kept for retries, per-chunk index vectors);
//! - output: `OrderedWriter` in order and out of order (the reorder buffer and its journal),
//!   including `finish` (which `fsync`s).

use std::collections::HashMap;
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use divan::{Bencher, counter::ItemsCount};
use loky_run::config::InputSpec;
use loky_run::input;
use loky_run::output::OrderedWriter;
use loky_run::protocol::{ChunkHeader, Cursor, FrameBuf, FrameReader, ResultsHeader, status};

fn main() {
    divan::main();
}

const CHUNK: usize = 1_000;

/// A chunk frame of `CHUNK` integer inputs, as the dispatcher sends it.
fn chunk_frame() -> Vec<u8> {
    let mut f = FrameBuf::new();
    ChunkHeader {
        chunk_id: 1,
        plugin: 0,
        task: 5,
        count: CHUNK as u32,
    }
    .write(&mut f);
    let mut digits = itoa_buf();
    for i in 0..CHUNK {
        f.put_bytes(fmt_int(&mut digits, i as i64 * 7919));
    }
    f.finish().to_vec()
}

/// A results frame answering [`chunk_frame`], as a worker sends it.
fn results_frame() -> Vec<u8> {
    let mut f = FrameBuf::new();
    ResultsHeader {
        chunk_id: 1,
        first: 0,
        count: CHUNK as u32,
        busy_ns: 12345,
        rss: 0,
        flags: 0,
    }
    .write(&mut f);
    let mut digits = itoa_buf();
    for i in 0..CHUNK {
        f.put_u8(status::OK);
        f.put_bytes(fmt_int(&mut digits, i as i64 * 7919));
    }
    f.finish().to_vec()
}

fn itoa_buf() -> Vec<u8> {
    Vec::with_capacity(24)
}

fn fmt_int(buf: &mut Vec<u8>, v: i64) -> &[u8] {
    use std::io::Write;
    buf.clear();
    write!(buf, "{v}").expect("to a Vec");
    buf
}

mod frames {
    use super::*;

    #[divan::bench]
    fn encode_chunk_1000(b: Bencher) {
        let inputs: Vec<Vec<u8>> = (0..CHUNK)
            .map(|i| (i as i64 * 7919).to_string().into_bytes())
            .collect();
        let mut f = FrameBuf::new();
        b.counter(ItemsCount::new(CHUNK)).bench_local(|| {
            ChunkHeader {
                chunk_id: 1,
                plugin: 0,
                task: 5,
                count: CHUNK as u32,
            }
            .write(&mut f);
            for input in &inputs {
                f.put_bytes(input);
            }
            black_box(f.finish().len())
        });
    }

    #[divan::bench]
    fn decode_chunk_1000(b: Bencher) {
        let frame = chunk_frame();
        b.counter(ItemsCount::new(CHUNK)).bench_local(|| {
            let mut c = Cursor::new(&frame[5..]);
            let h = ChunkHeader::read(&mut c).unwrap();
            let mut sum = 0usize;
            for _ in 0..h.count {
                sum += c.bytes().unwrap().len();
            }
            black_box(sum)
        });
    }

    #[divan::bench]
    fn encode_results_1000(b: Bencher) {
        let outputs: Vec<Vec<u8>> = (0..CHUNK)
            .map(|i| (i as i64 * 7919).to_string().into_bytes())
            .collect();
        let mut f = FrameBuf::new();
        b.counter(ItemsCount::new(CHUNK)).bench_local(|| {
            ResultsHeader {
                chunk_id: 1,
                first: 0,
                count: 0,
                busy_ns: 0,
                rss: 0,
                flags: 0,
            }
            .write(&mut f);
            for out in &outputs {
                f.put_u8(status::OK);
                f.put_bytes(out);
            }
            f.patch_u32(ResultsHeader::COUNT_OFFSET, CHUNK as u32);
            f.patch_u64(ResultsHeader::BUSY_OFFSET, 1);
            black_box(f.finish().len())
        });
    }

    #[divan::bench]
    fn decode_results_1000(b: Bencher) {
        let frame = results_frame();
        b.counter(ItemsCount::new(CHUNK)).bench_local(|| {
            let mut c = Cursor::new(&frame[5..]);
            let h = ResultsHeader::read(&mut c).unwrap();
            let mut sum = 0usize;
            for _ in 0..h.count {
                sum += c.u8().unwrap() as usize;
                sum += c.bytes().unwrap().len();
            }
            black_box(sum)
        });
    }

    /// `FrameReader::next_frame` over 100 chunk frames in memory (the copy out of the stream
    /// and the per-frame buffer handling, without syscalls).
    #[divan::bench]
    fn read_100_chunk_frames(b: Bencher) {
        let one = chunk_frame();
        let stream: Vec<u8> = (0..100).flat_map(|_| one.iter().copied()).collect();
        b.counter(ItemsCount::new(100 * CHUNK)).bench_local(|| {
            let mut r = FrameReader::new(&stream[..]);
            let mut n = 0;
            while let Some((_, payload)) = r.next_frame().unwrap() {
                n += payload.len();
            }
            black_box(n)
        });
    }

    /// The same with `take_frame` after each frame, as the pool's reader thread does (the
    /// buffer then has to be allocated again for the next frame).
    #[divan::bench]
    fn read_100_chunk_frames_take(b: Bencher) {
        let one = chunk_frame();
        let stream: Vec<u8> = (0..100).flat_map(|_| one.iter().copied()).collect();
        b.counter(ItemsCount::new(100 * CHUNK)).bench_local(|| {
            let mut r = FrameReader::new(&stream[..]);
            let mut n = 0;
            while r.next_frame().unwrap().is_some() {
                n += black_box(r.take_frame()).len();
            }
            black_box(n)
        });
    }
}

mod inputs {
    use super::*;

    /// `input::open` on a range, then `next_into` into a chunk: the per-input encoding cost.
    #[divan::bench]
    fn range_into_chunk_1000(b: Bencher) {
        let mut f = FrameBuf::new();
        b.counter(ItemsCount::new(CHUNK)).bench_local(|| {
            let mut src = input::open(
                &InputSpec::Range {
                    start: 1_000_000,
                    end: 1_000_000 + CHUNK as i64,
                },
                None,
            )
            .unwrap();
            f.begin(2);
            while src.next_into(&mut f).unwrap() {}
            black_box(f.finish().len())
        });
    }
}

mod dispatch {
    use super::*;

    /// A chunk of 1,000 range inputs built the way `run/stage.rs` `send_chunk` does: encode into
    /// the frame, record indices and attempts, copy the finished frame (kept for retries), and
    /// file the in-flight record in a map. Everything but the `write(2)`.
    #[divan::bench]
    fn build_chunk_1000_like_stage_rs(b: Bencher) {
        let mut src = input::open(
            &InputSpec::Range {
                start: 0,
                end: i64::MAX,
            },
            None,
        )
        .unwrap();
        let mut f = FrameBuf::new();
        // What `InFlight` keeps per chunk: the frame, input indices, attempts.
        type Record = (Vec<u8>, Vec<u64>, Vec<u32>);
        let mut in_flight: HashMap<u64, Record> = HashMap::new();
        let mut next_index = 0u64;
        let mut chunk_id = 0u64;
        b.counter(ItemsCount::new(CHUNK)).bench_local(|| {
            chunk_id += 1;
            ChunkHeader {
                chunk_id,
                plugin: 0,
                task: 5,
                count: 0,
            }
            .write(&mut f);
            let mut indices = Vec::new();
            let mut attempts = Vec::new();
            while indices.len() < CHUNK && src.next_into(&mut f).unwrap() {
                indices.push(next_index);
                attempts.push(0u32);
                next_index += 1;
            }
            f.patch_u32(5 + 8 + 2 + 4, indices.len() as u32);
            let frame = f.finish().to_vec();
            in_flight.insert(chunk_id, (frame, indices, attempts));
            // The results of the previous chunk came back: its record is dropped.
            in_flight.remove(&(chunk_id.wrapping_sub(1)));
        });
    }
}

mod output {
    use super::*;

    static SEQ: AtomicU64 = AtomicU64::new(0);

    fn scratch() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "loky-run-micro-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    const N: u64 = 100_000;

    fn outputs() -> Vec<Vec<u8>> {
        (0..N).map(|i| (i * 31).to_string().into_bytes()).collect()
    }

    /// 100,000 results arriving in input order: formatted and written straight through.
    #[divan::bench(sample_count = 20)]
    fn ordered_writer_in_order_100k(b: Bencher) {
        let outs = outputs();
        let dir = scratch();
        b.counter(ItemsCount::new(N as usize)).bench_local(|| {
            let mut w = OrderedWriter::create(&dir.join("s.jsonl")).unwrap();
            for (i, o) in outs.iter().enumerate() {
                w.ok(i as u64, None, o).unwrap();
            }
            assert_eq!(w.next_index(), N);
            w.finish().unwrap();
        });
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The same results arriving as two workers return them: chunks of 1,000 interleaved, the
    /// second worker's chunk first, so half of all results wait in the reorder buffer.
    #[divan::bench(sample_count = 20)]
    fn ordered_writer_two_workers_100k(b: Bencher) {
        let outs = outputs();
        let mut order = Vec::with_capacity(N as usize);
        for pair in (0..N).collect::<Vec<_>>().chunks(2 * CHUNK) {
            let (a, b) = pair.split_at(pair.len().min(CHUNK));
            order.extend_from_slice(b);
            order.extend_from_slice(a);
        }
        let dir = scratch();
        b.counter(ItemsCount::new(N as usize)).bench_local(|| {
            let mut w = OrderedWriter::create(&dir.join("s.jsonl")).unwrap();
            for &i in &order {
                w.ok(i, None, &outs[i as usize]).unwrap();
            }
            assert_eq!(w.next_index(), N);
            w.finish().unwrap();
        });
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Error records (serde_json formatting of the record).
    #[divan::bench(sample_count = 20)]
    fn ordered_writer_errors_10k(b: Bencher) {
        let dir = scratch();
        b.counter(ItemsCount::new(10_000usize)).bench_local(|| {
            let mut w = OrderedWriter::create(&dir.join("s.jsonl")).unwrap();
            for i in 0..10_000u64 {
                w.error(
                    i,
                    None,
                    loky_run::output::ErrorKind::TaskError,
                    "the square of 3037000500 does not fit in a 64-bit integer",
                    1,
                )
                .unwrap();
            }
            w.finish().unwrap();
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
}
