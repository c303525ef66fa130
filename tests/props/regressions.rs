//! Cases the properties led to, kept as plain tests.

use std::fs;

use loky_run::output::{OrderedWriter, seals};

/// A record of about 100 KB whose text depends on `run` (a task whose output is not the same
/// from one run to the next: a timestamp, a random sample).
fn record(i: u64, run: u8) -> Vec<u8> {
    let mut v = vec![b'"'];
    v.extend(std::iter::repeat_n(b'a' + run, 100_000));
    v.extend_from_slice(format!("{i}\"").as_bytes());
    v
}

/// A power cut can leave a seal on disk ahead of the data it seals (the seals file and the
/// output are written back independently). `resume` then checks what is there line by line and
/// keeps the seals before it, but the seals file itself still holds the stale entry until the
/// next seal is appended. If the runner dies again before that, the next `resume` checks the
/// new bytes against the stale seal: a task whose output differs from one run to the next
/// (a timestamp) makes them differ, and good results are reported as damage and run again.
#[test]
fn a_stale_seal_left_by_a_power_cut_is_not_damage_on_the_next_resume() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.jsonl");
    let mut w = OrderedWriter::create(&path).unwrap();
    for i in 0..25 {
        w.ok(i, None, &record(i, 0)).unwrap();
        w.flush().unwrap(); // a seal after each MiB
    }
    w.suspend().unwrap();
    let sealed = seals::read(&seals::seals_path(&path)).unwrap();
    assert!(sealed.len() >= 2, "{sealed:?}");

    // The power cut: the output lost its last 300 KB, the seals file reached the disk whole.
    let len = fs::metadata(&path).unwrap().len();
    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len - 300_000).unwrap();
    drop(f);

    let mut w = OrderedWriter::resume(&path).unwrap();
    assert_eq!(w.resumed().damaged_at, None, "a torn end is not damage");
    // The rerun writes other bytes for the lost records, and the runner dies again before
    // the next seal (a MiB further on).
    let next = w.next_index();
    for i in next..25 {
        w.ok(i, None, &record(i, 1)).unwrap();
    }
    w.flush().unwrap();
    std::mem::forget(w);

    let w = OrderedWriter::resume(&path).unwrap();
    assert_eq!(
        w.resumed().damaged_at,
        None,
        "results written after the resume were taken for damage ({} of 25 kept)",
        w.next_index()
    );
    assert_eq!(w.next_index(), 25);
}

/// A power cut can also tear the output inside a sealed segment (the seal reached the disk,
/// the data did not). `verify_prefix` checks a short segment line by line, but a last line
/// torn before its head was whole (`{"ind`) made it give up on the whole segment as damage:
/// every result of the segment (up to a MiB of them) ran again, and the user was warned of
/// damage at line 0.
#[test]
fn a_line_torn_inside_a_sealed_segment_is_a_torn_end_not_damage() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.jsonl");
    let mut w = OrderedWriter::create(&path).unwrap();
    for i in 0..10 {
        w.ok(i, None, format!("{}", i * i).as_bytes()).unwrap();
    }
    w.suspend().unwrap(); // seals everything written
    let full = fs::read(&path).unwrap();
    let seals_file = seals::seals_path(&path);
    let sealed = fs::read(&seals_file).unwrap();
    assert_eq!(seals::read(&seals_file).unwrap().len(), 1);
    let last_line = full[..full.len() - 1]
        .iter()
        .rposition(|&b| b == b'\n')
        .unwrap()
        + 1;
    for torn in [3, 9, 12, 20] {
        // `{"i`, `{"index":`, `{"index":9,`, `{"index":9,"output":`...
        let cut = (last_line + torn).min(full.len() - 1);
        fs::write(&path, &full[..cut]).unwrap();
        fs::write(&seals_file, &sealed).unwrap();
        let w = OrderedWriter::resume(&path).unwrap();
        let r = w.resumed();
        assert_eq!(r.damaged_at, None, "cut at {cut}: {r:?}");
        assert_eq!(
            w.next_index(),
            9,
            "cut at {cut}: the 9 whole lines are kept"
        );
        drop(w);
    }
}
