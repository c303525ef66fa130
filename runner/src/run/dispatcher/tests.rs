//! The scheduling core against a fake pool: no processes, every event scripted.
//!
//! The fake keeps its state behind a shared handle, so a test can script events and read what
//! the dispatcher asked for while the dispatcher holds the pool.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::num::NonZeroUsize;
use std::rc::Rc;

use super::*;
use crate::config::{InputSpec, Launcher, PoolSettings, Reuse, TaskRef};
use crate::console::Verbosity;
use crate::pool::{Memory, PoolCounters, PoolError};
use crate::protocol::FrameBuf;
use crate::sys::ProcessEnd;

/// One chunk the dispatcher sent.
#[derive(Debug, Clone)]
struct Sent {
    worker: WorkerId,
    chunk: u64,
    /// The inputs as JSON text.
    inputs: Vec<String>,
}

#[derive(Default)]
struct State {
    target: usize,
    next_id: WorkerId,
    /// Live workers: phase and tasks sent.
    workers: BTreeMap<WorkerId, (Phase, u64)>,
    progress: BTreeMap<WorkerId, Progress>,
    memory: BTreeMap<WorkerId, Memory>,
    events: VecDeque<PoolEvent>,
    sent: Vec<Sent>,
    /// `retire`/`terminate`/`kill`/`stop_after_current` calls, in order.
    stops: Vec<(WorkerId, StopReason)>,
    started: Vec<WorkerId>,
    /// `exit` reports workers lost with their node (a Slurm step's node failed).
    node_lost: bool,
}

#[derive(Clone, Default)]
struct Fake(Rc<RefCell<State>>);

impl Fake {
    fn new(target: usize) -> Self {
        let fake = Fake::default();
        fake.0.borrow_mut().target = target;
        fake.0.borrow_mut().next_id = 1;
        fake
    }

    fn ready(&self, worker: WorkerId) {
        let mut s = self.0.borrow_mut();
        if let Some(w) = s.workers.get_mut(&worker) {
            w.0 = Phase::Ready;
        }
        s.events.push_back(PoolEvent::Ready { worker });
    }

    fn ready_all(&self) {
        let ids: Vec<WorkerId> = self.0.borrow().workers.keys().copied().collect();
        for id in ids {
            self.ready(id);
        }
    }

    fn sent(&self) -> Vec<Sent> {
        self.0.borrow().sent.clone()
    }

    fn started(&self) -> Vec<WorkerId> {
        self.0.borrow().started.clone()
    }

    fn stops(&self) -> Vec<(WorkerId, StopReason)> {
        self.0.borrow().stops.clone()
    }

    fn set_progress(&self, worker: WorkerId, progress: Progress) {
        self.0.borrow_mut().progress.insert(worker, progress);
    }

    /// Answers positions `first..first + n` of a sent chunk with `status` and `output`,
    /// each result taking `busy` of work.
    fn answer_with(&self, sent: &Sent, first: u32, n: u32, code: u8, busy: Duration) {
        let mut f = FrameBuf::new();
        ResultsHeader {
            chunk_id: sent.chunk,
            first,
            count: n,
            busy_ns: busy.as_nanos() as u64 * u64::from(n),
            rss: 0,
            flags: 0,
        }
        .write(&mut f);
        for p in first..first + n {
            f.put_u8(code);
            let input = &sent.inputs[p as usize];
            if code == status::OK {
                f.put_bytes(input.as_bytes());
            } else {
                f.put_bytes(format!("failed on {input}").as_bytes());
            }
        }
        let frame = f.finish()[4..].to_vec();
        self.0.borrow_mut().events.push_back(PoolEvent::Results {
            worker: sent.worker,
            frame,
        });
    }

    /// Answers a whole chunk: every output equals its input.
    fn answer(&self, sent: &Sent, busy: Duration) {
        self.answer_with(sent, 0, sent.inputs.len() as u32, status::OK, busy);
    }

    /// The worker is gone (it leaves the pool when its exit is handed out, as in the real one).
    fn exit(&self, worker: WorkerId, reason: Option<StopReason>, progress: Progress) {
        let mut s = self.0.borrow_mut();
        let was_ready = s
            .workers
            .get(&worker)
            .is_some_and(|w| w.0 != Phase::Starting);
        let node_lost = s.node_lost;
        s.events.push_back(PoolEvent::Exited(WorkerExit {
            worker,
            reason,
            detail: None,
            node_lost,
            end: ProcessEnd::Signal(libc::SIGKILL),
            peak_rss: Some(1 << 20),
            was_ready,
            progress,
            process: format!("pid {}", 1000 + worker),
            identity: Some((1000 + worker, "fake".into())),
        }));
    }

    fn died_starting(&self, worker: WorkerId, end: ProcessEnd) {
        let mut s = self.0.borrow_mut();
        s.events.push_back(PoolEvent::Exited(WorkerExit {
            worker,
            reason: None,
            detail: None,
            node_lost: false,
            end,
            peak_rss: None,
            was_ready: false,
            progress: Progress::Between { last: None },
            process: format!("pid {}", 1000 + worker),
            identity: Some((1000 + worker, "fake".into())),
        }));
    }

    fn stop(&self, worker: WorkerId, reason: StopReason) {
        let mut s = self.0.borrow_mut();
        s.stops.push((worker, reason));
        if let Some(w) = s.workers.get_mut(&worker) {
            w.0 = Phase::Stopping;
        }
    }
}

impl WorkerPool for Fake {
    fn target_size(&self) -> usize {
        self.0.borrow().target
    }

    fn workers(&self) -> impl Iterator<Item = WorkerView> + '_ {
        let views: Vec<WorkerView> = self
            .0
            .borrow()
            .workers
            .iter()
            .map(|(id, (phase, _))| WorkerView {
                id: *id,
                phase: *phase,
            })
            .collect();
        views.into_iter()
    }

    fn fill(&mut self) -> Result<(), PoolError> {
        let mut s = self.0.borrow_mut();
        let active = s
            .workers
            .values()
            .filter(|(p, _)| *p != Phase::Stopping)
            .count();
        for _ in active..s.target {
            let id = s.next_id;
            s.next_id += 1;
            s.workers.insert(id, (Phase::Starting, 0));
            s.started.push(id);
        }
        Ok(())
    }

    fn send_chunk(&mut self, worker: WorkerId, frame: &Arc<Vec<u8>>, items: u32) {
        let mut c = Cursor::new(&frame[5..]);
        let header = ChunkHeader::read(&mut c).unwrap();
        assert_eq!(header.count, items);
        let inputs = (0..items)
            .map(|_| String::from_utf8(c.bytes().unwrap().to_vec()).unwrap())
            .collect();
        let mut s = self.0.borrow_mut();
        if let Some(w) = s.workers.get_mut(&worker) {
            w.1 += u64::from(items);
        }
        s.sent.push(Sent {
            worker,
            chunk: header.chunk_id,
            inputs,
        });
    }

    fn identity(&self, worker: WorkerId) -> Option<(u32, String)> {
        Some((1000 + worker, "fake".into()))
    }

    fn tasks_sent(&self, worker: WorkerId) -> u64 {
        self.0.borrow().workers.get(&worker).map_or(0, |w| w.1)
    }

    fn progress(&self, worker: WorkerId) -> Progress {
        self.0
            .borrow()
            .progress
            .get(&worker)
            .copied()
            .unwrap_or(Progress::Between { last: None })
    }

    fn memory(&mut self, worker: WorkerId) -> Option<Memory> {
        self.0.borrow().memory.get(&worker).copied()
    }

    fn retire(&mut self, worker: WorkerId, reason: StopReason) {
        self.stop(worker, reason);
    }

    fn stop_after_current(&mut self, worker: WorkerId, reason: StopReason) {
        self.stop(worker, reason);
    }

    fn terminate(&mut self, worker: WorkerId, reason: StopReason, _grace: Duration) {
        self.stop(worker, reason);
    }

    fn kill(&mut self, worker: WorkerId, reason: StopReason) {
        self.stop(worker, reason);
    }

    fn next_event(&mut self, _timeout: Duration) -> Option<PoolEvent> {
        let mut s = self.0.borrow_mut();
        let event = s.events.pop_front();
        if let Some(PoolEvent::Exited(exit)) = &event {
            s.workers.remove(&exit.worker);
        }
        event
    }

    fn counters(&self) -> PoolCounters {
        PoolCounters::default()
    }
}

fn settings() -> PoolSettings {
    PoolSettings {
        max_workers: NonZeroUsize::new(4),
        idle_timeout: None,
        reuse: Reuse::Auto,
        env: BTreeMap::new(),
        initializer: None,
        max_tasks_per_worker: 0,
        max_memory_growth: None,
        task_timeout: None,
        retries: 0,
        on_error: OnError::Continue,
        chunksize: ChunkSize::Auto,
        launcher: Launcher::Local,
        srun_args: Vec::new(),
    }
}

/// A stage of `total` range inputs, its output file, and a fake pool of `workers`.
struct Harness {
    stage: Stage,
    total: u64,
    dir: tempfile::TempDir,
    console: Console,
    events: EventLog,
    fake: Fake,
}

impl Harness {
    fn new(total: u64, workers: usize, tune: impl FnOnce(&mut PoolSettings)) -> Self {
        let mut s = settings();
        tune(&mut s);
        let stage = Stage {
            name: "s".into(),
            task: TaskRef {
                plugin: Some("demo".into()),
                name: "echo".into(),
            },
            input: InputSpec::Range {
                start: 0,
                end: total as i64,
            },
            settings: s,
            kill_workers: false,
        };
        Self {
            stage,
            total,
            dir: tempfile::tempdir().unwrap(),
            console: Console::new(Verbosity::Quiet),
            events: EventLog::disabled(),
            fake: Fake::new(workers),
        }
    }

    fn writer(&self) -> OrderedWriter {
        OrderedWriter::create(&self.dir.path().join("s.jsonl")).unwrap()
    }

    fn job(&self) -> StageJob<'_> {
        StageJob {
            stage: &self.stage,
            plugin: 0,
            task: 0,
            total: self.total,
            input: crate::input::open(&self.stage.input, None).unwrap(),
            grace: Duration::from_secs(1),
            progress_every: None,
        }
    }

    /// The records written, by index: `Ok(output)` or `Err(kind)`.
    fn records(&self, writer: OrderedWriter) -> BTreeMap<u64, Result<String, String>> {
        writer.finish().unwrap();
        let text = std::fs::read_to_string(self.dir.path().join("s.jsonl")).unwrap();
        text.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                let index = v["index"].as_u64().unwrap();
                let r = match v.get("output") {
                    Some(o) => Ok(o.to_string()),
                    None => Err(v["error"]["kind"].as_str().unwrap().to_owned()),
                };
                (index, r)
            })
            .collect()
    }
}

/// A dispatcher for `$h` on its fake pool, every worker started and ready (`warm!`) or none
/// started yet (`cold!`); `$writer` and `$pool` are the locals it borrows.
macro_rules! warm {
    ($h:ident, $writer:ident, $pool:ident, $d:ident) => {
        let mut $writer = $h.writer();
        let mut $pool = $h.fake.clone();
        $pool.fill().unwrap();
        $h.fake.ready_all();
        #[allow(unused_mut)]
        let mut $d = Dispatcher::new($h.job(), &mut $pool, &mut $writer, &$h.events, &$h.console);
    };
}

macro_rules! cold {
    ($h:ident, $writer:ident, $pool:ident, $d:ident) => {
        let mut $writer = $h.writer();
        let mut $pool = $h.fake.clone();
        #[allow(unused_mut)]
        let mut $d = Dispatcher::new($h.job(), &mut $pool, &mut $writer, &$h.events, &$h.console);
    };
}

/// Steps until every scripted event is handled and acted on (the fake never blocks).
fn settle<P: WorkerPool>(d: &mut Dispatcher<'_, P>, fake: &Fake) {
    for _ in 0..1_000 {
        if !d.step(Instant::now()).unwrap() {
            return; // the stage is over; what is left waits for the next one
        }
        if fake.0.borrow().events.is_empty() {
            // One more turn to act on what the last event changed.
            d.step(Instant::now()).unwrap();
            if fake.0.borrow().events.is_empty() {
                return;
            }
        }
    }
    panic!("the dispatcher did not settle");
}

/// Answers every chunk sent and not yet answered, until the stage ends.
fn run_to_end<P: WorkerPool>(d: &mut Dispatcher<'_, P>, fake: &Fake, answered: &mut usize) {
    for _ in 0..10_000 {
        let sent = fake.sent();
        for s in &sent[*answered..] {
            fake.answer(s, Duration::from_micros(10));
        }
        *answered = sent.len();
        if !d.step(Instant::now()).unwrap() {
            return;
        }
    }
    panic!("the stage did not end");
}

fn per_worker(sent: &[Sent]) -> BTreeMap<WorkerId, usize> {
    let mut m = BTreeMap::new();
    for s in sent {
        *m.entry(s.worker).or_default() += 1;
    }
    m
}

#[test]
fn a_fresh_pool_gives_one_task_to_each_worker_as_it_becomes_ready() {
    let h = Harness::new(4, 4, |_| {});
    cold!(h, writer, pool, d);
    d.step(Instant::now()).unwrap();
    assert_eq!(h.fake.started(), [1, 2, 3, 4]);
    assert!(
        h.fake.sent().is_empty(),
        "nothing goes to a starting worker"
    );
    // The first worker ready gets one task, not two: the others are about to be ready.
    h.fake.ready(1);
    settle(&mut d, &h.fake);
    let sent = h.fake.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!((sent[0].worker, sent[0].inputs.len()), (1, 1));
    for w in 2..=4 {
        h.fake.ready(w);
    }
    settle(&mut d, &h.fake);
    let sent = h.fake.sent();
    assert_eq!(
        per_worker(&sent),
        BTreeMap::from([(1, 1), (2, 1), (3, 1), (4, 1)])
    );
    // All four are running at once: the stage waits for them, none prefetched.
    assert_eq!(d.book.busy(), 4);
}

#[test]
fn a_warm_pool_with_chunksize_1_spreads_the_tasks_over_every_worker() {
    let h = Harness::new(4, 4, |s| s.chunksize = ChunkSize::Fixed(NonZeroUsize::MIN));
    warm!(h, writer, pool, d);
    settle(&mut d, &h.fake);
    let workers: BTreeSet<WorkerId> = h.fake.sent().iter().map(|s| s.worker).collect();
    assert_eq!(workers.len(), 4);
}

#[test]
fn short_tasks_are_prefetched_and_long_ones_never() {
    for (busy, prefetched) in [
        (Duration::from_micros(5), true),
        (Duration::from_secs(2), false),
    ] {
        let h = Harness::new(1_000, 2, |_| {});
        let mut writer = h.writer();
        let mut pool = h.fake.clone();
        pool.fill().unwrap();
        h.fake.ready_all();
        let mut d = Dispatcher::new(h.job(), &mut pool, &mut writer, &h.events, &h.console);
        settle(&mut d, &h.fake);
        // One item each to begin with; the first answer teaches the time per item.
        let first = h.fake.sent();
        assert_eq!(first.len(), 2);
        h.fake.answer(&first[0], busy);
        settle(&mut d, &h.fake);
        let held_by_2 = per_worker(&h.fake.sent())[&2];
        assert_eq!(
            held_by_2 == 2,
            prefetched,
            "busy {busy:?}: worker 2 got {held_by_2} chunk(s)"
        );
        assert!(d.book.seat_ref(1).unwrap().chunks.len() <= 2);
    }
}

#[test]
fn nothing_is_prefetched_behind_a_big_item() {
    let mut h = Harness::new(6, 1, |s| s.chunksize = ChunkSize::Fixed(NonZeroUsize::MIN));
    let big = serde_json::Value::String("x".repeat(CHUNK_SOFT_BYTES));
    let small = serde_json::json!(1);
    h.stage.input = InputSpec::Items(vec![
        small.clone(),
        small.clone(),
        big.clone(),
        big,
        small.clone(),
        small,
    ]);
    warm!(h, writer, pool, d);
    settle(&mut d, &h.fake);
    // Fast answers: small items are prefetched, so the first big one is queued behind the
    // second small one ...
    h.fake.answer(&h.fake.sent()[0], Duration::from_micros(5));
    settle(&mut d, &h.fake);
    let sent = h.fake.sent();
    assert_eq!(
        sent.len(),
        3,
        "a small item, then a big one queued behind it"
    );
    // ... but nothing behind the big one, though it would be prefetched were it small.
    h.fake.answer(&sent[1], Duration::from_micros(5));
    settle(&mut d, &h.fake);
    assert_eq!(h.fake.sent().len(), 3);
    h.fake.answer(&h.fake.sent()[2], Duration::from_micros(5));
    settle(&mut d, &h.fake);
    assert_eq!(
        h.fake.sent().len(),
        4,
        "the next big one goes once the first is answered"
    );
}

#[test]
fn the_last_tasks_do_not_wait_behind_a_busy_worker() {
    let h = Harness::new(3, 2, |s| s.chunksize = ChunkSize::Fixed(NonZeroUsize::MIN));
    warm!(h, writer, pool, d);
    settle(&mut d, &h.fake);
    let sent = h.fake.sent();
    assert_eq!(sent.len(), 2);
    // Worker 1 answers fast: worker 2 still runs. One task is left for two workers: it is not
    // queued behind worker 2 but goes to worker 1, now idle.
    h.fake.answer(&sent[0], Duration::from_micros(5));
    settle(&mut d, &h.fake);
    let sent = h.fake.sent();
    assert_eq!(sent.len(), 3);
    assert_eq!(sent[2].worker, 1);
    assert_eq!(d.book.seat_ref(2).unwrap().chunks.len(), 1);
}

#[test]
fn every_task_gets_exactly_one_record() {
    let h = Harness::new(10_000, 3, |_| {});
    cold!(h, writer, pool, d);
    d.step(Instant::now()).unwrap();
    h.fake.ready_all();
    let mut answered = 0;
    run_to_end(&mut d, &h.fake, &mut answered);
    let outcome = d.finish();
    assert_eq!((outcome.ok, outcome.failed), (10_000, 0));
    let records = h.records(writer);
    assert_eq!(records.len(), 10_000);
    assert!(records.iter().all(|(i, r)| r == &Ok(i.to_string())));
    // Chunks shrank towards the end, to single items.
    let sent = h.fake.sent();
    assert!(sent.iter().map(|s| s.inputs.len()).max().unwrap() > 100);
    assert_eq!(sent.last().unwrap().inputs.len(), 1);
}

/// A stage of `total` inputs in chunks of `chunk` on `workers` ready workers.
fn started(
    total: u64,
    workers: usize,
    chunk: usize,
    tune: impl FnOnce(&mut PoolSettings),
) -> Harness {
    Harness::new(total, workers, |s| {
        s.chunksize = ChunkSize::Fixed(NonZeroUsize::new(chunk).unwrap());
        tune(s);
    })
}

#[test]
fn a_crash_charges_the_running_item_and_the_others_run_again_uncharged() {
    // 64 inputs in chunks of 4 (guided self-scheduling does not cut them yet).
    let h = started(64, 1, 4, |_| {});
    warm!(h, writer, pool, d);
    settle(&mut d, &h.fake);
    let chunk = h.fake.sent()[0].clone();
    assert_eq!(chunk.inputs, ["0", "1", "2", "3"]);
    // Position 0 answered; 1 returned but unreported; 2 running when it died; 3 never started.
    h.fake
        .answer_with(&chunk, 0, 1, status::OK, Duration::from_micros(5));
    h.fake.exit(
        1,
        None,
        Progress::Running {
            chunk: chunk.chunk,
            position: 2,
            since: Instant::now(),
        },
    );
    settle(&mut d, &h.fake);
    assert_eq!(d.outcome().failed, 1);
    // A fresh worker takes the two others, neither charged.
    h.fake.ready(2);
    let mut answered = 1;
    run_to_end(&mut d, &h.fake, &mut answered);
    let records = h.records(writer);
    assert_eq!(records.len(), 64);
    assert_eq!(records[&2], Err("crashed".into()));
    for i in (0..64).filter(|i| *i != 2) {
        assert_eq!(records[&i], Ok(i.to_string()));
    }
}

#[test]
fn several_lost_results_between_calls_are_suspects_run_alone() {
    let h = started(100, 1, 5, |_| {});
    warm!(h, writer, pool, d);
    settle(&mut d, &h.fake);
    let chunk = h.fake.sent()[0].clone();
    // Items 0..=2 returned, none reported (a task closed the result stream, or a kill from
    // outside): any of them, or none, may be to blame.
    h.fake.exit(
        1,
        None,
        Progress::Between {
            last: Some((chunk.chunk, 2)),
        },
    );
    settle(&mut d, &h.fake);
    assert_eq!(d.outcome().failed, 0, "no suspect is charged");
    h.fake.ready(2);
    settle(&mut d, &h.fake);
    let sent = h.fake.sent();
    // Each suspect runs alone, on an idle worker, with nothing behind it.
    assert_eq!(sent[1].inputs, ["0"]);
    assert_eq!(sent.len(), 2);
    // Alone, a failure is certain: it dies between calls again, with its own result lost.
    h.fake.exit(
        2,
        None,
        Progress::Between {
            last: Some((sent[1].chunk, 0)),
        },
    );
    h.fake.ready(3);
    settle(&mut d, &h.fake);
    assert_eq!(d.outcome().failed, 1);
    let mut answered = h.fake.sent().len() - 1;
    h.fake.ready(3);
    run_to_end(&mut d, &h.fake, &mut answered);
    let records = h.records(writer);
    assert_eq!(records[&0], Err("crashed".into()));
    assert_eq!(records.len(), 100);
    for i in 1..100 {
        assert_eq!(records[&i], Ok(i.to_string()));
    }
}

#[test]
fn a_task_that_kills_every_worker_costs_retries_plus_one_workers() {
    let h = started(3, 1, 1, |s| s.retries = 2);
    cold!(h, writer, pool, d);
    let mut answered = 0;
    let mut deaths = 0;
    for _ in 0..100 {
        d.step(Instant::now()).unwrap();
        h.fake.ready_all();
        settle(&mut d, &h.fake);
        let sent = h.fake.sent();
        for s in &sent[answered..] {
            if s.inputs == ["1"] {
                // Input 1 kills whatever runs it, inside its call.
                deaths += 1;
                h.fake.exit(
                    s.worker,
                    None,
                    Progress::Running {
                        chunk: s.chunk,
                        position: 0,
                        since: Instant::now(),
                    },
                );
            } else {
                h.fake.answer(s, Duration::from_micros(5));
            }
        }
        answered = sent.len();
        if !d.step(Instant::now()).unwrap() {
            break;
        }
    }
    assert_eq!(deaths, 3, "sent: {:?}", h.fake.sent());
    let outcome = d.finish();
    assert_eq!((outcome.ok, outcome.failed, outcome.retried), (2, 1, 2));
    assert_eq!(h.fake.started().len(), 1 + 3);
    let records = h.records(writer);
    assert_eq!(records[&1], Err("crashed".into()));
}

/// Runs a 2-input stage whose workers die while starting, ending as `ends` says in turn (then
/// they start fine); returns the workers started and the outcome.
fn start_deaths(
    ends: &[ProcessEnd],
) -> (
    Vec<WorkerId>,
    StageOutcome,
    BTreeMap<u64, Result<String, String>>,
) {
    let h = started(2, 1, 1, |_| {});
    cold!(h, writer, pool, d);
    let mut ends = ends.iter();
    let mut answered = 0;
    for _ in 0..100 {
        if !d.step(Instant::now()).unwrap() {
            break;
        }
        let last = *h.fake.started().last().unwrap();
        let starting = h
            .fake
            .0
            .borrow()
            .workers
            .get(&last)
            .is_some_and(|w| w.0 == Phase::Starting);
        if starting && h.fake.0.borrow().events.is_empty() {
            match ends.next() {
                Some(end) => h.fake.died_starting(last, *end),
                None => h.fake.ready(last),
            }
        }
        let sent = h.fake.sent();
        for s in &sent[answered..] {
            h.fake.answer(s, Duration::from_micros(5));
        }
        answered = sent.len();
    }
    let outcome = d.finish();
    (h.fake.started(), outcome, h.records(writer))
}

#[test]
fn a_worker_that_dies_while_starting_is_replaced() {
    // A kill from outside while it loaded plugins: a fresh worker takes over.
    let (started, outcome, records) = start_deaths(&[ProcessEnd::Signal(libc::SIGKILL)]);
    assert_eq!(started, [1, 2]);
    assert!(outcome.stopped.is_none());
    assert_eq!(records.len(), 2);
    assert!(records.values().all(Result::is_ok));
    // Two different deaths in a row are still retried.
    let (started, outcome, _) =
        start_deaths(&[ProcessEnd::Signal(libc::SIGKILL), ProcessEnd::Exit(1)]);
    assert_eq!(started.len(), 3);
    assert_eq!(outcome.ok, 2);
}

#[test]
fn a_worker_that_dies_the_same_way_again_while_starting_stops_the_stage() {
    let segv = ProcessEnd::Signal(libc::SIGSEGV);
    let (started, outcome, records) = start_deaths(&[segv, segv, segv]);
    assert_eq!(started.len(), 2);
    assert!(matches!(outcome.stopped, Some(StageStop::WorkerStart(_))));
    assert_eq!(records[&0], Err("initializer".into()));
    // Deaths of every kind: START_DEATH_LIMIT in a row at most.
    let ends = [
        ProcessEnd::Signal(libc::SIGKILL),
        ProcessEnd::Exit(1),
        ProcessEnd::Signal(libc::SIGSEGV),
        ProcessEnd::Exit(2),
    ];
    let (started, outcome, _) = start_deaths(&ends);
    assert_eq!(started.len(), START_DEATH_LIMIT as usize);
    assert!(matches!(outcome.stopped, Some(StageStop::WorkerStart(_))));
}

#[test]
fn workers_that_keep_dying_holding_nothing_stop_the_stage() {
    let h = started(5, 1, 1, |_| {});
    cold!(h, writer, pool, d);
    for _ in 0..100 {
        settle(&mut d, &h.fake);
        h.fake.ready_all();
        settle(&mut d, &h.fake);
        if !d.step(Instant::now()).unwrap() {
            break;
        }
        // Each worker dies before it starts the item it was given.
        let live: Vec<WorkerId> = h.fake.0.borrow().workers.keys().copied().collect();
        for w in live {
            h.fake.exit(w, None, Progress::Between { last: None });
        }
    }
    let outcome = d.finish();
    assert!(matches!(outcome.stopped, Some(StageStop::WorkersLost(_))));
    assert_eq!(
        h.fake.started().len() as u32,
        lost_death_limit(1),
        "bounded"
    );
}

#[test]
fn a_task_past_its_timeout_is_stopped_and_recorded_as_a_timeout() {
    let h = started(2, 2, 1, |s| s.task_timeout = Some(Duration::from_secs(5)));
    warm!(h, writer, pool, d);
    settle(&mut d, &h.fake);
    let sent = h.fake.sent();
    // Worker 2 answers; worker 1 runs on.
    h.fake.answer(&sent[1], Duration::from_micros(5));
    settle(&mut d, &h.fake);
    let t0 = Instant::now();
    h.fake.set_progress(
        1,
        Progress::Running {
            chunk: sent[0].chunk,
            position: 0,
            since: t0,
        },
    );
    // Not yet: due at t0 + 5 s.
    let due = d.tick(t0 + Duration::from_secs(4)).unwrap();
    assert!(due <= t0 + Duration::from_secs(5));
    assert!(h.fake.stops().is_empty());
    d.tick(t0 + Duration::from_secs(6));
    assert_eq!(h.fake.stops(), [(1, StopReason::Timeout)]);
    h.fake.exit(
        1,
        Some(StopReason::Timeout),
        Progress::Between { last: None },
    );
    settle(&mut d, &h.fake);
    let outcome = d.finish();
    assert_eq!((outcome.ok, outcome.failed), (1, 1));
    let records = h.records(writer);
    assert_eq!(records[&0], Err("timeout".into()));
}

#[test]
fn a_result_that_never_arrives_is_a_timeout_too() {
    // A remote worker: the runner cannot see it run; its result has not come for too long.
    let h = started(1, 1, 1, |s| s.task_timeout = Some(Duration::from_secs(5)));
    let mut writer = h.writer();
    let mut pool = h.fake.clone();
    pool.fill().unwrap();
    h.fake.ready_all();
    h.fake.set_progress(1, Progress::Unknown);
    let mut d = Dispatcher::new(h.job(), &mut pool, &mut writer, &h.events, &h.console);
    settle(&mut d, &h.fake);
    d.tick(Instant::now() + Duration::from_secs(6));
    assert_eq!(h.fake.stops(), [(1, StopReason::Timeout)]);
    h.fake.exit(1, Some(StopReason::Timeout), Progress::Unknown);
    settle(&mut d, &h.fake);
    let outcome = d.finish();
    assert_eq!(outcome.failed, 1);
    assert_eq!(h.records(writer)[&0], Err("timeout".into()));
}

#[test]
fn idle_workers_retire_after_the_idle_timeout_and_recycled_ones_when_idle() {
    let h = started(2, 2, 1, |s| {
        s.idle_timeout = Some(Duration::from_secs(10));
        s.max_tasks_per_worker = 1;
    });
    warm!(h, writer, pool, d);
    settle(&mut d, &h.fake);
    let sent = h.fake.sent();
    assert_eq!(sent.len(), 2);
    // Worker 1 reached max_tasks_per_worker: once it holds nothing, it retires.
    h.fake.answer(&sent[0], Duration::from_micros(5));
    settle(&mut d, &h.fake);
    assert!(h.fake.stops().contains(&(1, StopReason::MaxTasks)));
    drop(d);

    let h = started(1, 2, 1, |s| s.idle_timeout = Some(Duration::from_secs(10)));
    warm!(h, writer, pool, d);
    settle(&mut d, &h.fake);
    // One task, two workers: worker 2 idles; it retires once the idle timeout has passed.
    let now = Instant::now();
    d.tick(now);
    assert!(h.fake.stops().is_empty());
    d.tick(now + Duration::from_secs(11));
    assert_eq!(h.fake.stops(), [(2, StopReason::IdleTimeout)]);
}

#[test]
fn memory_growth_recycles_a_worker_once_it_is_idle() {
    let h = started(4, 1, 1, |s| s.max_memory_growth = Some(100));
    let mut writer = h.writer();
    let mut pool = h.fake.clone();
    pool.fill().unwrap();
    h.fake.ready_all();
    h.fake.0.borrow_mut().memory.insert(
        1,
        Memory {
            rss: 1_000,
            baseline: 500,
        },
    );
    let mut d = Dispatcher::new(h.job(), &mut pool, &mut writer, &h.events, &h.console);
    settle(&mut d, &h.fake);
    h.fake.answer(&h.fake.sent()[0], Duration::from_micros(5));
    settle(&mut d, &h.fake);
    assert_eq!(h.fake.stops(), [(1, StopReason::MemoryGrowth)]);
    assert_eq!(
        h.fake.sent().len(),
        1,
        "no new work for a worker due for recycling"
    );
}

#[test]
fn results_for_positions_a_worker_was_not_given_end_it() {
    let h = started(64, 1, 2, |_| {});
    warm!(h, writer, pool, d);
    settle(&mut d, &h.fake);
    let sent = h.fake.sent()[0].clone();
    // Position 1 before position 0.
    h.fake
        .answer_with(&sent, 1, 1, status::OK, Duration::from_micros(5));
    settle(&mut d, &h.fake);
    assert_eq!(h.fake.stops(), [(1, StopReason::BrokenStream)]);
    assert_eq!(d.outcome().ok, 0);
}

#[test]
fn an_interrupt_stops_dispatching_and_leaves_the_rest_not_run() {
    let h = started(100, 2, 1, |_| {});
    warm!(h, writer, pool, d);
    settle(&mut d, &h.fake);
    let sent = h.fake.sent();
    // Stop as a first Ctrl-C does (without raising a signal in the test process).
    d.outcome.stopped = Some(StageStop::Interrupted(libc::SIGINT));
    for s in &sent {
        h.fake.answer(s, Duration::from_micros(5));
    }
    settle(&mut d, &h.fake);
    assert_eq!(h.fake.sent().len(), sent.len(), "nothing more handed out");
    let outcome = d.finish();
    assert_eq!((outcome.ok, outcome.not_run()), (2, 98));
}

#[test]
fn task_errors_are_retried_then_recorded() {
    let h = started(1, 1, 1, |s| s.retries = 1);
    warm!(h, writer, pool, d);
    for _ in 0..2 {
        settle(&mut d, &h.fake);
        let last = h.fake.sent().last().unwrap().clone();
        h.fake
            .answer_with(&last, 0, 1, status::TASK_ERROR, Duration::from_micros(5));
    }
    settle(&mut d, &h.fake);
    let outcome = d.finish();
    assert_eq!((outcome.failed, outcome.retried), (1, 1));
    // The retry went to the same worker: a task error does not need a fresh one.
    assert!(h.fake.sent().iter().all(|s| s.worker == 1));
    assert_eq!(h.records(writer)[&0], Err("task_error".into()));
}

#[test]
fn a_result_too_large_for_a_frame_is_recorded_and_not_retried() {
    let h = started(64, 1, 2, |s| s.retries = 3);
    warm!(h, writer, pool, d);
    settle(&mut d, &h.fake);
    let sent = h.fake.sent()[0].clone();
    h.fake
        .answer_with(&sent, 0, 1, status::TOO_LARGE, Duration::from_micros(5));
    h.fake
        .answer_with(&sent, 1, 1, status::OK, Duration::from_micros(5));
    settle(&mut d, &h.fake);
    let mut answered = 1;
    run_to_end(&mut d, &h.fake, &mut answered);
    let outcome = d.finish();
    assert_eq!((outcome.ok, outcome.failed, outcome.retried), (63, 1, 0));
    assert_eq!(h.records(writer)[&0], Err("too_large".into()));
}

#[test]
fn a_retry_that_needs_a_fresh_worker_reaches_it_past_an_older_idle_one() {
    // Input 0 crashes worker 2. Its retry must go to a worker started after 2, even though
    // the older worker 1 is idle, comes first in the list, and gets nothing else.
    let h = started(1, 2, 1, |s| s.retries = 1);
    let mut writer = h.writer();
    let mut pool = h.fake.clone();
    pool.fill().unwrap();
    h.fake.ready(2);
    let mut d = Dispatcher::new(h.job(), &mut pool, &mut writer, &h.events, &h.console);
    settle(&mut d, &h.fake);
    let first = h.fake.sent()[0].clone();
    assert_eq!(first.worker, 2);
    h.fake.exit(
        2,
        None,
        Progress::Running {
            chunk: first.chunk,
            position: 0,
            since: Instant::now(),
        },
    );
    settle(&mut d, &h.fake);
    h.fake.ready(1);
    settle(&mut d, &h.fake);
    assert_eq!(h.fake.sent().len(), 1, "not to the older worker 1");
    h.fake.ready(3);
    settle(&mut d, &h.fake);
    let sent = h.fake.sent();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(sent[1].worker, 3);
}

#[test]
fn a_retry_waits_a_bounded_time_for_a_newer_worker_that_stays_starting() {
    // Input 0 crashes worker 2; its replacement 3 starts but never becomes ready (a Slurm step
    // waiting for CPUs that only the older workers hold). The idle older worker 1 takes the
    // retry once FRESH_WORKER_WAIT has passed, not before.
    let h = started(1, 2, 1, |s| {
        s.retries = 1;
        s.idle_timeout = None;
    });
    let mut writer = h.writer();
    let mut pool = h.fake.clone();
    pool.fill().unwrap();
    h.fake.ready(2);
    let mut d = Dispatcher::new(h.job(), &mut pool, &mut writer, &h.events, &h.console);
    settle(&mut d, &h.fake);
    let first = h.fake.sent()[0].clone();
    assert_eq!(first.worker, 2);
    let crashed_at = Instant::now();
    h.fake.exit(
        2,
        None,
        Progress::Running {
            chunk: first.chunk,
            position: 0,
            since: crashed_at,
        },
    );
    settle(&mut d, &h.fake);
    h.fake.ready(1);
    settle(&mut d, &h.fake);
    d.step(crashed_at + FRESH_WORKER_WAIT / 2).unwrap();
    assert_eq!(h.fake.sent().len(), 1, "not yet to the older worker 1");
    d.step(Instant::now() + FRESH_WORKER_WAIT).unwrap();
    let sent = h.fake.sent();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(sent[1].worker, 1);
    h.fake.answer(&sent[1], Duration::from_micros(5));
    let mut answered = 2;
    run_to_end(&mut d, &h.fake, &mut answered);
    let outcome = d.finish();
    assert_eq!((outcome.ok, outcome.retried), (1, 1));
}

#[test]
fn a_retry_after_a_lost_node_needs_no_fresh_worker() {
    // Worker 2 was lost with its node while running input 0: the task did nothing to it, so
    // the idle older worker 1 takes the retry at once, though worker 3 is starting.
    let h = started(1, 2, 1, |s| {
        s.retries = 1;
        s.idle_timeout = None;
    });
    let mut writer = h.writer();
    let mut pool = h.fake.clone();
    pool.fill().unwrap();
    h.fake.ready(2);
    let mut d = Dispatcher::new(h.job(), &mut pool, &mut writer, &h.events, &h.console);
    settle(&mut d, &h.fake);
    let first = h.fake.sent()[0].clone();
    h.fake.0.borrow_mut().node_lost = true;
    h.fake.exit(
        2,
        None,
        Progress::Running {
            chunk: first.chunk,
            position: 0,
            since: Instant::now(),
        },
    );
    settle(&mut d, &h.fake);
    h.fake.ready(1);
    settle(&mut d, &h.fake);
    let sent = h.fake.sent();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(sent[1].worker, 1);
    h.fake.answer(&sent[1], Duration::from_micros(5));
    let mut answered = 2;
    run_to_end(&mut d, &h.fake, &mut answered);
    let outcome = d.finish();
    assert_eq!((outcome.ok, outcome.retried), (1, 1));
}

#[test]
fn lost_results_charge_the_item_that_lost_them_not_the_one_running_at_the_kill() {
    // Input 0 redirected the result descriptor and returned; the worker ran on into input 1
    // when the pool found the loss and ended it.
    let h = started(64, 1, 4, |_| {});
    warm!(h, writer, pool, d);
    settle(&mut d, &h.fake);
    let chunk = h.fake.sent()[0].clone();
    h.fake.exit(
        1,
        Some(StopReason::LostResults),
        Progress::Running {
            chunk: chunk.chunk,
            position: 1,
            since: Instant::now(),
        },
    );
    settle(&mut d, &h.fake);
    h.fake.ready(2);
    let mut answered = 1;
    run_to_end(&mut d, &h.fake, &mut answered);
    let records = h.records(writer);
    assert_eq!(records[&0], Err("crashed".into()));
    assert_eq!(records[&1], Ok("1".into()), "input 1 was innocent");
    assert_eq!(records.len(), 64);
}

#[test]
fn a_retry_waiting_for_a_newer_worker_that_never_comes_runs_on_an_older_one() {
    // The replacement of the crashed worker 2 could not start (the pool shrank to 1): the
    // retry must not wait forever for a worker newer than 2.
    let h = started(2, 2, 1, |s| s.retries = 1);
    warm!(h, writer, pool, d);
    settle(&mut d, &h.fake);
    let sent = h.fake.sent();
    let on_2 = sent.iter().find(|s| s.worker == 2).unwrap().clone();
    let on_1 = sent.iter().find(|s| s.worker == 1).unwrap().clone();
    h.fake.answer(&on_1, Duration::from_micros(5));
    h.fake.exit(
        2,
        None,
        Progress::Running {
            chunk: on_2.chunk,
            position: 0,
            since: Instant::now(),
        },
    );
    h.fake.0.borrow_mut().target = 1;
    let mut answered = sent.len();
    run_to_end(&mut d, &h.fake, &mut answered);
    let outcome = d.finish();
    assert_eq!((outcome.ok, outcome.retried), (2, 1));
    assert_eq!(h.fake.sent().last().unwrap().worker, 1);
}

#[test]
fn a_first_failure_under_on_error_fail_stops_what_is_queued() {
    let h = started(1_000, 2, 5, |s| s.on_error = OnError::Fail);
    warm!(h, writer, pool, d);
    settle(&mut d, &h.fake);
    let first = h.fake.sent()[0].clone();
    h.fake
        .answer_with(&first, 0, 1, status::TASK_ERROR, Duration::from_micros(5));
    settle(&mut d, &h.fake);
    // Both workers finish the item they run, and nothing queued behind it starts.
    let stops = h.fake.stops();
    assert!(stops.contains(&(1, StopReason::StageStopped)), "{stops:?}");
    assert!(stops.contains(&(2, StopReason::StageStopped)), "{stops:?}");
    let sent = h.fake.sent().len();
    for w in [1, 2] {
        h.fake.exit(
            w,
            Some(StopReason::StageStopped),
            Progress::Between { last: None },
        );
    }
    settle(&mut d, &h.fake);
    assert_eq!(h.fake.sent().len(), sent, "nothing more handed out");
    let outcome = d.finish();
    assert_eq!(outcome.stopped, Some(StageStop::FirstFailure));
    assert_eq!(outcome.failed, 1);
}

#[test]
fn requeued_inputs_do_not_add_up_past_the_frame_bounds() {
    // Two large inputs requeued after a crash go in two chunks, not one over the limit.
    let h = started(64, 1, 8, |_| {});
    warm!(h, writer, pool, d);
    settle(&mut d, &h.fake);
    let big = vec![b'x'; CHUNK_SOFT_BYTES - 1_000];
    for index in [40, 41] {
        d.requeue.push_back(Pending {
            item: Item::fresh(index),
            input: big.clone(),
            newer_than: None,
        });
    }
    let chunk = h.fake.sent()[0].clone();
    h.fake.answer(&chunk, Duration::from_micros(5));
    settle(&mut d, &h.fake);
    let sent = h.fake.sent();
    let last = sent.last().unwrap();
    assert_eq!(last.inputs.len(), 1, "one large input per chunk");
}
