//! `output::OrderedWriter` through crashes and damage: results are recorded in a random
//! completion order, flushed now and then, the runner "dies" (`mem::forget`: no destructor,
//! as after a `kill -9`) or is interrupted (`suspend`), then any of `<stage>.jsonl`,
//! `.journal/<stage>.log` and `.journal/<stage>.seals` is cut, has bits flipped or bytes
//! changed or cut out, or is deleted; the stage is resumed, and after a few such rounds it is
//! finished. The final file must be the clean run's, byte for byte, and a resumed writer must
//! never count as recorded a result that was never written.
//!
//! The one exception is by design (`output/seals.rs`): what follows the last seal is checked
//! line by line, so a change there that leaves a whole record with the right index (a digit of
//! an output, a letter of a string) cannot be told from the record written. The property is
//! precise about it: a final line may differ from the clean one only if it is byte for byte a
//! line that sat, damaged, in the unsealed tail of an output being resumed (after the last seal
//! that the damaged seals file still holds and that the damaged output still reaches). A line in
//! a sealed segment, and anything in the journal, is never kept wrong.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use loky_run::output::{ErrorKind, OrderedWriter, journal_path, seals};
use proptest::prelude::*;
use proptest::sample::Index;

#[derive(Clone)]
enum Rec {
    Ok(Vec<u8>),
    Err {
        kind: ErrorKind,
        message: String,
        attempts: u32,
    },
}

/// Outputs as text, long ones shortened: a failing case stays readable.
impl std::fmt::Debug for Rec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rec::Ok(o) if o.len() > 60 => write!(
                f,
                "Ok({:?}... {} bytes)",
                String::from_utf8_lossy(&o[..40]),
                o.len()
            ),
            Rec::Ok(o) => write!(f, "Ok({:?})", String::from_utf8_lossy(o)),
            Rec::Err {
                kind,
                message,
                attempts,
            } => write!(f, "Err({kind:?}, {message:?}, {attempts})"),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum File {
    Output,
    Journal,
    Seals,
}

#[derive(Debug, Clone)]
enum Damage {
    /// Cut the file at a byte (a torn write, a copy that stopped).
    Truncate(File, Index),
    Flip(File, Index, u8),
    Set(File, Index, u8),
    /// Bytes cut out of the middle.
    CutOut(File, Index, usize),
    Remove(File),
}

#[derive(Debug, Clone)]
enum End {
    /// `kill -9`: with or without a flush of the last batch first.
    Crash { flush_last: bool },
    /// Ctrl-C: everything recorded is made durable and sealed.
    Suspend,
}

#[derive(Debug, Clone)]
struct Round {
    /// How much of what is left this round records.
    take: Index,
    flush_every: usize,
    end: End,
    damage: Vec<Damage>,
}

#[derive(Debug, Clone)]
struct Case {
    records: Vec<Rec>,
    /// How far behind its index a result may complete: results are recorded in the order of
    /// `index + jitter[index]`.
    jitter: Vec<usize>,
    rounds: Vec<Round>,
    /// The task's output differs from one run to the next (a timestamp): round `r` writes
    /// version `r` of each record, and any version is a right final line.
    volatile: bool,
}

fn message() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            4 => prop::sample::select(vec!['a', 'z', ' ', '"', '\\', '\n', '0', '9', '{', '}']),
            1 => any::<char>(),
        ],
        0..24,
    )
    .prop_map(|c| c.into_iter().collect())
}

fn record(big: bool) -> impl Strategy<Value = Rec> {
    let small = prop_oneof![
        any::<i64>().prop_map(|v| v.to_string().into_bytes()),
        message().prop_map(|m| serde_json::to_vec(&m).unwrap()),
        (any::<u16>(), message()).prop_map(|(a, m)| {
            serde_json::to_vec(&serde_json::json!({ "a": a, "m": m, "l": [1, 2.5, null] })).unwrap()
        }),
    ];
    // Large outputs, so that a case crosses several seals (one per MiB): a long run of
    // letters, where a flipped bit most often leaves valid JSON.
    let large = (20_000usize..400_000).prop_map(|n| {
        let mut v = Vec::with_capacity(n + 2);
        v.push(b'"');
        v.extend((0..n).map(|i| b"abcdefgh"[i % 8]));
        v.push(b'"');
        v
    });
    let kind = prop::sample::select(vec![
        ErrorKind::TaskError,
        ErrorKind::Panic,
        ErrorKind::Crashed,
        ErrorKind::Timeout,
        ErrorKind::Initializer,
        ErrorKind::TooLarge,
    ]);
    let error = (kind, message(), 1u32..4).prop_map(|(kind, message, attempts)| Rec::Err {
        kind,
        message,
        attempts,
    });
    let big_weight = if big { 3 } else { 0 };
    prop_oneof![
        6 => small.prop_map(Rec::Ok),
        big_weight => large.prop_map(Rec::Ok),
        2 => error,
    ]
}

fn file() -> impl Strategy<Value = File> {
    prop_oneof![3 => Just(File::Output), 1 => Just(File::Journal), 1 => Just(File::Seals)]
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        2 => (file(), any::<Index>()).prop_map(|(f, at)| Damage::Truncate(f, at)),
        4 => (file(), any::<Index>(), 0u8..8).prop_map(|(f, at, bit)| Damage::Flip(f, at, bit)),
        2 => (file(), any::<Index>(), any::<u8>()).prop_map(|(f, at, b)| Damage::Set(f, at, b)),
        2 => (file(), any::<Index>(), 1usize..200).prop_map(|(f, at, n)| Damage::CutOut(f, at, n)),
        1 => file().prop_map(Damage::Remove),
    ]
}

fn round() -> impl Strategy<Value = Round> {
    let end = prop_oneof![
        3 => any::<bool>().prop_map(|flush_last| End::Crash { flush_last }),
        1 => Just(End::Suspend),
    ];
    (
        any::<Index>(),
        1usize..12,
        end,
        prop_oneof![
            1 => Just(Vec::new()),
            3 => prop::collection::vec(damage(), 1..3),
        ],
    )
        .prop_map(|(take, flush_every, end, damage)| Round {
            take,
            flush_every,
            end,
            damage,
        })
}

fn case() -> impl Strategy<Value = Case> {
    (any::<bool>(), 1usize..90).prop_flat_map(|(big, n)| {
        let n = if big { n.min(40) } else { n };
        (
            prop::collection::vec(record(big), n),
            prop::collection::vec(0usize..12, n),
            prop::collection::vec(round(), 1..4),
            prop::bool::weighted(0.3),
        )
            .prop_map(|(records, jitter, rounds, volatile)| Case {
                records,
                jitter,
                rounds,
                volatile,
            })
    })
}

/// Records `rec` (its `version`, for a volatile task).
fn write(w: &mut OrderedWriter, index: usize, rec: &Rec, version: Option<usize>) {
    match (rec, version) {
        (Rec::Ok(output), None) => w.ok(index as u64, None, output).unwrap(),
        (Rec::Ok(output), Some(v)) => {
            let text = [b"[", &output[..], format!(",{v}]").as_bytes()].concat();
            w.ok(index as u64, None, &text).unwrap();
        }
        (
            Rec::Err {
                kind,
                message,
                attempts,
            },
            v,
        ) => {
            let message = match v {
                Some(v) => format!("{message} #{v}"),
                None => message.clone(),
            };
            w.error(index as u64, None, *kind, &message, *attempts)
                .unwrap();
        }
    }
}

fn path_of(output: &Path, f: File) -> PathBuf {
    match f {
        File::Output => output.to_owned(),
        File::Journal => journal_path(output),
        File::Seals => seals::seals_path(output),
    }
}

fn apply(output: &Path, d: &Damage) {
    let f = match d {
        Damage::Truncate(f, ..)
        | Damage::Flip(f, ..)
        | Damage::Set(f, ..)
        | Damage::CutOut(f, ..)
        | Damage::Remove(f) => *f,
    };
    let path = path_of(output, f);
    let Ok(mut bytes) = fs::read(&path) else {
        return; // not there (nothing journaled, nothing sealed)
    };
    if let Damage::Remove(_) = d {
        fs::remove_file(&path).unwrap();
        return;
    }
    if bytes.is_empty() {
        return;
    }
    match d {
        Damage::Truncate(_, at) => bytes.truncate(at.index(bytes.len())),
        Damage::Flip(_, at, bit) => {
            let at = at.index(bytes.len());
            bytes[at] ^= 1 << bit;
        }
        Damage::Set(_, at, b) => {
            let at = at.index(bytes.len());
            bytes[at] = *b;
        }
        Damage::CutOut(_, at, n) => {
            let from = at.index(bytes.len());
            let to = (from + n).min(bytes.len());
            bytes.drain(from..to);
        }
        Damage::Remove(_) => unreachable!(),
    }
    fs::write(&path, bytes).unwrap();
}

/// The lines of the output that a resume checks line by line only (after the last seal the
/// seals file still holds and the output still reaches), as `(line number, bytes)`.
fn unsealed_tail(output: &Path) -> Vec<(usize, Vec<u8>)> {
    let bytes = fs::read(output).unwrap_or_default();
    let sealed = seals::read(&seals::seals_path(output)).unwrap_or_default();
    let from = sealed
        .iter()
        .map(|s| s.offset)
        .filter(|&o| o <= bytes.len() as u64)
        .max()
        .unwrap_or(0) as usize;
    let mut tail = Vec::new();
    let mut start = 0;
    for (number, line) in bytes.split_inclusive(|&b| b == b'\n').enumerate() {
        if start >= from && line.ends_with(b"\n") {
            tail.push((number, line.to_vec()));
        }
        start += line.len();
    }
    tail
}

fn lines(bytes: &[u8]) -> Vec<&[u8]> {
    bytes.split_inclusive(|&b| b == b'\n').collect()
}

/// How often a damaged line in an unsealed tail was kept (the documented gap), over all cases
/// of this process: printed with `PROPS_VERBOSE=1`.
static GAP_KEPT: AtomicU64 = AtomicU64::new(0);

fn run_case(case: &Case) -> Result<(), TestCaseError> {
    let n = case.records.len();
    let dir = tempfile::tempdir().unwrap();

    // The clean run's file: one per version for a volatile task.
    let versions: Vec<Option<usize>> = if case.volatile {
        (0..=case.rounds.len()).map(Some).collect()
    } else {
        vec![None]
    };
    let version_of = |round: usize| versions[round.min(versions.len() - 1)];
    let mut cleans = Vec::new();
    for (k, &v) in versions.iter().enumerate() {
        let clean_path = dir.path().join(format!("clean{k}")).join("s.jsonl");
        fs::create_dir_all(clean_path.parent().unwrap()).unwrap();
        let mut clean = OrderedWriter::create(&clean_path).unwrap();
        for (i, rec) in case.records.iter().enumerate() {
            write(&mut clean, i, rec, v);
        }
        clean.finish().unwrap();
        cleans.push(fs::read(&clean_path).unwrap());
    }

    let path = dir.path().join("run").join("s.jsonl");
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut written = BTreeSet::new();
    let mut tolerated: BTreeSet<(usize, Vec<u8>)> = BTreeSet::new();
    let mut damaged_before = false;
    let mut w = OrderedWriter::create(&path).unwrap();

    for (r, round) in case.rounds.iter().enumerate() {
        let mut todo: Vec<usize> = (0..n).filter(|&i| !w.is_done(i as u64)).collect();
        todo.sort_by_key(|&i| (i + case.jitter[i], i));
        let take = round.take.index(todo.len() + 1);
        for (k, &i) in todo[..take].iter().enumerate() {
            write(&mut w, i, &case.records[i], version_of(r));
            written.insert(i);
            if (k + 1) % round.flush_every == 0 {
                w.flush().unwrap();
            }
        }
        match round.end {
            End::Crash { flush_last } => {
                if flush_last {
                    w.flush().unwrap();
                }
                std::mem::forget(w);
            }
            End::Suspend => w.suspend().unwrap(),
        }
        for d in &round.damage {
            apply(&path, d);
        }
        tolerated.extend(unsealed_tail(&path));

        w = OrderedWriter::resume(&path).unwrap();
        let r = w.resumed();
        let done: Vec<usize> = (0..n).filter(|&i| w.is_done(i as u64)).collect();
        for &i in &done {
            prop_assert!(
                written.contains(&i),
                "index {i} counted as recorded, never written"
            );
        }
        prop_assert_eq!(r.records(), done.len() as u64, "resumed counts: {:?}", r);
        prop_assert!(r.prefix <= w.next_index());
        prop_assert_eq!(w.pending_bytes(), 0, "the gaps can be filled");
        // Cuts are what a crash or a power cut leaves (a torn end, seals ahead of the data):
        // never damage. Anything else may be.
        damaged_before |= round
            .damage
            .iter()
            .any(|d| !matches!(d, Damage::Truncate(..) | Damage::Remove(_)));
        if !damaged_before {
            prop_assert_eq!(r.damaged_at, None, "damage reported where there was none");
        }
    }

    // Finish the stage: every index without a record runs (in completion order).
    let mut todo: Vec<usize> = (0..n).filter(|&i| !w.is_done(i as u64)).collect();
    todo.sort_by_key(|&i| (i + case.jitter[i], i));
    for &i in &todo {
        write(&mut w, i, &case.records[i], version_of(case.rounds.len()));
    }
    let sha = w.finish().unwrap();
    let got = fs::read(&path).unwrap();
    prop_assert!(!journal_path(&path).exists(), "finish deletes the journal");
    prop_assert!(
        !seals::seals_path(&path).exists(),
        "finish deletes the seals"
    );
    let sha_of_file: String = {
        use sha2::Digest;
        sha2::Sha256::digest(&got)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    prop_assert_eq!(sha, sha_of_file);
    if !case.volatile && got == cleans[0] {
        return Ok(());
    }
    let got_lines = lines(&got);
    let clean_lines: Vec<Vec<&[u8]>> = cleans.iter().map(|c| lines(c)).collect();
    prop_assert_eq!(got_lines.len(), n, "one line per input");
    for (i, g) in got_lines.iter().enumerate() {
        let c = clean_lines[0][i];
        if !clean_lines.iter().any(|clean| clean[i] == *g) {
            prop_assert!(
                tolerated.contains(&(i, g.to_vec())),
                "line {i} kept wrong: {:?} instead of {:?}",
                String::from_utf8_lossy(&g[..g.len().min(200)]),
                String::from_utf8_lossy(&c[..c.len().min(200)])
            );
            GAP_KEPT.fetch_add(1, Ordering::Relaxed);
            if std::env::var_os("PROPS_VERBOSE").is_some() {
                eprintln!(
                    "unsealed-tail gap: line {i} kept as damaged ({} kept so far)",
                    GAP_KEPT.load(Ordering::Relaxed)
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(crate::config(40))]

    #[test]
    fn a_resumed_stage_ends_as_the_clean_run_and_never_keeps_a_wrong_record(case in case()) {
        run_case(&case)?;
    }
}
