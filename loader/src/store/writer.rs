//! The database's writer: a thread of its own that takes each tick's
//! batch over a channel and commits it as one transaction, so a commit
//! (and a checkpoint now and then) never holds up the daemon's loop.
//!
//! Every batch gets a sequence number when it is handed over; the writer
//! says which it has committed (`durable`, `wait`). A batch that fails (a
//! full disk) is rolled back whole, reported (`take_failure`), and tried
//! again in front of the next one, in the same transaction: a batch says
//! what things *are* now, so applying it later, before the newer ones, is
//! right. Past `MAX_PENDING_ROWS` waiting, they are dropped (`lost`), and
//! only a `replace` batch of the whole state makes the database whole again.
use super::batch::{self, Batch};
use anyhow::{anyhow, Result};
use rusqlite::Connection;
use std::{
    sync::{mpsc, Arc, Condvar, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// Rows of failed batches kept for the next try, at most (a few hundred
/// MB of records): past that, a full state is cheaper than the backlog.
const MAX_PENDING_ROWS: usize = 1_000_000;

pub struct Writer {
    tx: Option<mpsc::Sender<Batch>>,
    /// The number the next batch gets (the first is 1).
    next: u64,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<Connection>>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<Progress>,
    changed: Condvar,
}

/// What the writer has done, for the daemon's status and metrics and for
/// crash tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// The last batch committed (0: none yet), every batch before it
    /// with it (one that failed was committed with a later one), unless
    /// `lost`. Batches are committed in the order they were handed over.
    pub durable: u64,
    /// The last batch the writer is done with, committed or failed.
    pub done: u64,
    /// Batches that failed since `take_failure` last asked, the first one's
    /// number and error.
    pub failed: Option<(u64, String)>,
    /// Failed batches waiting to be tried again with the next.
    pub pending: usize,
    /// Failed batches were dropped (see `MAX_PENDING_ROWS`): the database
    /// misses changes until a `replace` batch is committed.
    pub lost: bool,
    pub batches: u64,
    pub rows: u64,
    /// The longest a batch took, from its `BEGIN` to its `COMMIT`.
    pub longest: Duration,
    /// All batches together.
    pub busy: Duration,
}

impl Writer {
    /// Starts the writer on `conn` (see `Store::writer`).
    pub(super) fn start(conn: Connection) -> Result<Self> {
        let (tx, rx) = mpsc::channel::<Batch>();
        let shared = Arc::new(Shared::default());
        let theirs = shared.clone();
        let thread = std::thread::Builder::new()
            .name("sipguard-store".into())
            .spawn(move || run(conn, &rx, &theirs))?;
        Ok(Self {
            tx: Some(tx),
            next: 1,
            shared,
            thread: Some(thread),
        })
    }

    /// Hands `batch` to the writer; its number, for `wait`. An empty batch
    /// is not sent (its number is that of the last one sent).
    pub fn send(&mut self, batch: Batch) -> Result<u64> {
        if batch.is_empty() {
            return Ok(self.next - 1);
        }
        self.tx
            .as_ref()
            .and_then(|tx| tx.send(batch).ok())
            .ok_or_else(|| anyhow!("the store's writer is gone"))?;
        self.next += 1;
        Ok(self.next - 1)
    }

    /// The last batch committed (0: none).
    pub fn durable(&self) -> u64 {
        self.progress().durable
    }

    /// What the writer has done so far.
    pub fn progress(&self) -> Progress {
        self.shared.state.lock().expect("writer state").clone()
    }

    /// The first failed batch since the last call, with its error: what it
    /// held is not in the database.
    pub fn take_failure(&self) -> Option<(u64, String)> {
        self.shared
            .state
            .lock()
            .expect("writer state")
            .failed
            .take()
    }

    /// Waits until the writer is done with batch `seq`: an error if it is
    /// not committed (it failed, and waits for the next batch to be tried
    /// again), if changes were `lost`, or if the writer is gone.
    pub fn wait(&self, seq: u64) -> Result<()> {
        let mut state = self.shared.state.lock().expect("writer state");
        while state.done < seq {
            if self.thread.as_ref().is_none_or(|t| t.is_finished()) {
                return Err(anyhow!("the store's writer is gone"));
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, Duration::from_millis(100))
                .expect("writer state")
                .0;
        }
        if state.lost {
            return Err(anyhow!(
                "failed batches were dropped: the database needs the whole state"
            ));
        }
        if state.durable < seq {
            let why = state.failed.as_ref().map_or("", |f| f.1.as_str());
            return Err(anyhow!("batch {seq} is not saved yet: {why}"));
        }
        Ok(())
    }

    /// Waits for every batch handed over.
    pub fn flush(&self) -> Result<()> {
        self.wait(self.next - 1)
    }

    /// Writes what is left, then checkpoints the log into the database and
    /// empties it (a stopped daemon leaves one file an operator can copy).
    pub fn close(mut self) -> Result<Progress> {
        let flushed = self.flush();
        self.tx = None;
        let conn = self
            .thread
            .take()
            .expect("running")
            .join()
            .map_err(|_| anyhow!("the store's writer panicked"))?;
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        flushed?;
        Ok(self.progress())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // The writer ends once it has written what it was handed.
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(conn: Connection, rx: &mpsc::Receiver<Batch>, shared: &Shared) -> Connection {
    let mut seq = 0;
    // Failed batches, in order, tried again in front of the next.
    let mut pending: Vec<Batch> = Vec::new();
    let mut pending_rows = 0;
    for batch in rx {
        seq += 1;
        if batch.replace {
            // The whole state: nothing before it matters.
            pending.clear();
            pending_rows = 0;
        }
        let started = Instant::now();
        let result = conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(anyhow::Error::from)
            .and_then(|()| {
                let applied = pending
                    .iter()
                    .chain([&batch])
                    .try_for_each(|b| batch::apply(&conn, b));
                super::schema::finish(&conn, applied)
            });
        let took = started.elapsed();
        let mut state = shared.state.lock().expect("writer state");
        state.done = seq;
        let mut freed = Vec::new();
        match result {
            Ok(()) => {
                state.durable = seq;
                state.batches += 1 + pending.len() as u64;
                state.rows += (pending_rows + batch.len()) as u64;
                state.longest = state.longest.max(took);
                state.busy += took;
                state.lost &= !batch.replace;
                freed = std::mem::take(&mut pending);
                pending_rows = 0;
                freed.push(batch);
            }
            Err(e) => {
                tracing::error!("store: batch {seq} not saved (tried again with the next): {e:#}");
                state.failed.get_or_insert((seq, format!("{e:#}")));
                pending_rows += batch.len();
                pending.push(batch);
                if pending_rows > MAX_PENDING_ROWS {
                    tracing::error!(
                        "store: {pending_rows} rows of failed batches dropped; the whole state is needed"
                    );
                    state.lost = true;
                    freed = std::mem::take(&mut pending);
                    pending_rows = 0;
                }
            }
        }
        state.pending = pending.len();
        drop(state);
        shared.changed.notify_all();
        // Their memory freed here, off the lock.
        drop(freed);
    }
    conn
}
