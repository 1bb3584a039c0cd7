//! Concurrency helpers of [`DiskStore`](super::DiskStore): per-share locks and group commit.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::{Condvar, Mutex, PoisonError};

use crate::StoreError;

/// A set of keys each held by at most one thread: serialises puts and removes of one share, so
/// its file name is never written by two threads and never deleted under a writer.
#[derive(Debug)]
pub(super) struct KeyLocks<K> {
    held: Mutex<HashSet<K>>,
    released: Condvar,
}

/// Holds one key of a [`KeyLocks`] until dropped.
#[derive(Debug)]
pub(super) struct KeyGuard<'a, K: Eq + Hash> {
    locks: &'a KeyLocks<K>,
    key: K,
}

impl<K: Eq + Hash + Copy> KeyLocks<K> {
    pub(super) fn new() -> Self {
        KeyLocks {
            held: Mutex::new(HashSet::new()),
            released: Condvar::new(),
        }
    }

    /// Waits until no other thread holds `key`, then holds it.
    pub(super) fn lock(&self, key: K) -> Result<KeyGuard<'_, K>, StoreError> {
        let mut held = self.held.lock().map_err(|_| StoreError::Poisoned)?;
        while held.contains(&key) {
            held = self.released.wait(held).map_err(|_| StoreError::Poisoned)?;
        }
        held.insert(key);
        Ok(KeyGuard { locks: self, key })
    }
}

impl<K: Eq + Hash> Drop for KeyGuard<'_, K> {
    fn drop(&mut self) {
        // The set stays correct even if a panic poisoned the mutex: only insert/remove touch it.
        let mut held = self
            .locks
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        held.remove(&self.key);
        drop(held);
        self.locks.released.notify_all();
    }
}

/// Group commit: operations submitted while a commit is running are applied together in the
/// next one, so a burst from many threads costs one fsync per batch instead of one per
/// operation.
///
/// There is no committer thread. The first submitter that finds no commit running becomes the
/// leader: it takes every pending operation (its own included), runs them as one batch, hands
/// each submitter its result and steps down; one of the threads still waiting takes over. A
/// thread only ever runs batches that contain its own operation, so none is starved. The queue
/// holds at most one operation per waiting thread, so it is bounded by the caller's pool size.
#[derive(Debug)]
pub(super) struct GroupCommit<Op, Out> {
    state: Mutex<Queue<Op, Out>>,
    wake: Condvar,
}

#[derive(Debug)]
struct Queue<Op, Out> {
    next_ticket: u64,
    pending: Vec<(u64, Op)>,
    done: HashMap<u64, Result<Out, StoreError>>,
    committing: bool,
}

impl<Op, Out> GroupCommit<Op, Out> {
    pub(super) fn new() -> Self {
        GroupCommit {
            state: Mutex::new(Queue {
                next_ticket: 0,
                pending: Vec::new(),
                done: HashMap::new(),
                committing: false,
            }),
            wake: Condvar::new(),
        }
    }

    /// Submits `op` and waits for its result. `run` applies a batch and returns one result
    /// per operation, in order.
    pub(super) fn submit(
        &self,
        op: Op,
        run: impl Fn(Vec<Op>) -> Vec<Result<Out, StoreError>>,
    ) -> Result<Out, StoreError> {
        self.submit_many(vec![op], run)?
            .pop()
            .unwrap_or(Err(StoreError::Poisoned))
    }

    /// Submits `ops` together (they land in the same batch, so one commit covers them all)
    /// and waits for their results, in order.
    pub(super) fn submit_many(
        &self,
        ops: Vec<Op>,
        run: impl Fn(Vec<Op>) -> Vec<Result<Out, StoreError>>,
    ) -> Result<Vec<Result<Out, StoreError>>, StoreError> {
        let mut queue = self.state.lock().map_err(|_| StoreError::Poisoned)?;
        let first = queue.next_ticket;
        let count = ops.len() as u64;
        queue.next_ticket += count;
        queue.pending.extend(
            ops.into_iter()
                .enumerate()
                .map(|(i, op)| (first + i as u64, op)),
        );
        loop {
            // All of ours are published at once (one batch), so the first says the rest are.
            if count == 0 || queue.done.contains_key(&first) {
                return Ok((first..first + count)
                    .map(|t| queue.done.remove(&t).unwrap_or(Err(StoreError::Poisoned)))
                    .collect());
            }
            if !queue.committing {
                queue.committing = true;
                let (tickets, ops): (Vec<u64>, Vec<Op>) =
                    std::mem::take(&mut queue.pending).into_iter().unzip();
                drop(queue);
                let mut leader = Leader {
                    commit: self,
                    tickets,
                    results: None,
                };
                leader.results = Some(run(ops));
                drop(leader);
                queue = self.state.lock().map_err(|_| StoreError::Poisoned)?;
                continue;
            }
            queue = self.wake.wait(queue).map_err(|_| StoreError::Poisoned)?;
        }
    }
}

/// Publishes a batch's results when dropped, also when `run` panicked (then every operation of
/// the batch gets [`StoreError::Poisoned`]), so no submitter waits forever.
struct Leader<'a, Op, Out> {
    commit: &'a GroupCommit<Op, Out>,
    tickets: Vec<u64>,
    results: Option<Vec<Result<Out, StoreError>>>,
}

impl<Op, Out> Drop for Leader<'_, Op, Out> {
    fn drop(&mut self) {
        let mut results = self.results.take().unwrap_or_default().into_iter();
        let mut queue = self
            .commit
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for &ticket in &self.tickets {
            let result = results.next().unwrap_or(Err(StoreError::Poisoned));
            queue.done.insert(ticket, result);
        }
        queue.committing = false;
        drop(queue);
        self.commit.wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn group_commit_returns_each_result_to_its_submitter() {
        let gc = Arc::new(GroupCommit::<u32, u32>::new());
        let batches = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8u32)
            .map(|t| {
                let gc = gc.clone();
                let batches = batches.clone();
                std::thread::spawn(move || {
                    for i in 0..50u32 {
                        let op = t * 1000 + i;
                        let out = gc
                            .submit(op, |ops| {
                                batches.fetch_add(1, Ordering::Relaxed);
                                std::thread::sleep(std::time::Duration::from_micros(200));
                                ops.into_iter().map(|o| Ok(o * 2)).collect()
                            })
                            .unwrap();
                        assert_eq!(out, op * 2);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let batches = batches.load(Ordering::Relaxed);
        assert!(
            batches < 400,
            "no batching: {batches} batches for 400 operations"
        );
    }

    #[test]
    fn group_commit_survives_a_panicking_batch() {
        let gc = GroupCommit::<u32, u32>::new();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            gc.submit(1, |_| panic!("boom"))
        }));
        assert!(caught.is_err());
        assert_eq!(
            gc.submit(2, |ops| ops.into_iter().map(Ok).collect()).ok(),
            Some(2)
        );
    }

    #[test]
    fn key_locks_exclude_per_key() {
        let locks = Arc::new(KeyLocks::<u8>::new());
        let inside = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let locks = locks.clone();
                let inside = inside.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        let _g = locks.lock(7).unwrap();
                        assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                        let _other = locks.lock(8).unwrap();
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
}
