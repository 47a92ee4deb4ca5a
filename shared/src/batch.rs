//! Coalescing: many concurrent callers, one round trip per batch.
//!
//! The consume loop handles up to `max_in_flight` messages at once, each in its own task. A
//! [`Coalescer`] lets those tasks share round trips: each task [`submit`](Coalescer::submit)s
//! its request and awaits its own reply; a background task takes what has been submitted
//! (up to [`CoalesceSettings::max_batch`]) and hands it to the flush function as one batch,
//! with at most [`CoalesceSettings::max_batches_in_flight`] batches on the wire at once.
//!
//! It is adaptive by construction: a batch forms only while every flush slot is busy, so an idle
//! system sends each request alone, at once, with no added wait, and a loaded one sends larger
//! batches. Requests keep their submission order within a batch.

use std::{collections::HashMap, future::Future, hash::Hash, sync::Arc};

use tokio::sync::{mpsc, oneshot, Semaphore};

/// How large batches get and how many are on the wire at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoalesceSettings {
    /// Most requests in one batch.
    pub max_batch: usize,
    /// Most batches being flushed at once.
    pub max_batches_in_flight: usize,
}

impl Default for CoalesceSettings {
    /// Four batches of up to 64: on a small machine this matched or beat 256 single requests in
    /// flight, where one batch at a time did not (BENCHMARKS.md).
    fn default() -> Self {
        Self {
            max_batch: 64,
            max_batches_in_flight: 4,
        }
    }
}

/// Why a request got no reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CoalesceError {
    /// The coalescing task has stopped (the runtime is shutting down).
    #[error("the coalescer has stopped")]
    Stopped,
    /// The flush function panicked, or answered a batch with the wrong number of replies (a bug).
    #[error("the batch holding this request failed without a reply")]
    NoReply,
}

type Pending<T, R> = (T, oneshot::Sender<R>);

/// Handle to a coalescing task; cloning shares it. The task ends once every handle is dropped
/// and the batches in flight are answered.
#[derive(Debug)]
pub struct Coalescer<T, R> {
    requests: mpsc::UnboundedSender<Pending<T, R>>,
}

impl<T, R> Clone for Coalescer<T, R> {
    fn clone(&self) -> Self {
        Self {
            requests: self.requests.clone(),
        }
    }
}

impl<T: Send + 'static, R: Send + 'static> Coalescer<T, R> {
    /// Starts the coalescing task on the current Tokio runtime. `flush` gets each batch and must
    /// answer with one reply per request, in the batch's order.
    pub fn start<F, Fut>(settings: CoalesceSettings, flush: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<R>> + Send + 'static,
    {
        let (requests, pending) = mpsc::unbounded_channel();
        tokio::spawn(run(settings, flush, pending));
        Self { requests }
    }

    /// Submits `request` and waits for its reply.
    pub async fn submit(&self, request: T) -> Result<R, CoalesceError> {
        let (reply, done) = oneshot::channel();
        self.requests
            .send((request, reply))
            .map_err(|_| CoalesceError::Stopped)?;
        done.await.map_err(|_| CoalesceError::NoReply)
    }
}

async fn run<T, R, F, Fut>(
    settings: CoalesceSettings,
    flush: F,
    mut pending: mpsc::UnboundedReceiver<Pending<T, R>>,
) where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<R>> + Send + 'static,
{
    let max_batch = settings.max_batch.max(1);
    let slots = Arc::new(Semaphore::new(settings.max_batches_in_flight.max(1)));
    loop {
        // A free slot first: while every slot is busy, requests queue and the next batch grows.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return; // never closed
        };
        let Some(first) = pending.recv().await else {
            return; // every handle dropped; batches in flight finish on their own tasks
        };
        let mut batch = Vec::with_capacity(max_batch.min(pending.len() + 1));
        batch.push(first);
        while batch.len() < max_batch {
            match pending.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let (requests, replies): (Vec<T>, Vec<oneshot::Sender<R>>) = batch.into_iter().unzip();
        let answer = flush(requests);
        tokio::spawn(async move {
            let answers = answer.await;
            drop(slot);
            if answers.len() != replies.len() {
                // Dropping the senders answers every caller with `NoReply`.
                tracing::error!(
                    requests = replies.len(),
                    replies = answers.len(),
                    "a batch flush answered the wrong number of replies"
                );
                return;
            }
            for (reply, answer) in replies.into_iter().zip(answers) {
                // The caller may have gone (shutdown): nothing to tell it then.
                let _ = reply.send(answer);
            }
        });
    }
}

/// Runs one batch as groups and answers in the batch's order: the items whose `group` is equal
/// form one group (their indexes in batch order), `run` sends each group (all of them
/// concurrently, in any order within it) and answers `(index, reply)` for the indexes it was
/// given. The skeleton of a flush whose items must be split by Redis Cluster slot (or script,
/// or both).
///
/// An index without a reply stays `None`: the caller decides what that means (the coalescer
/// answers a whole batch with a missing reply `NoReply`).
pub async fn by_group<'a, T, K, R, F, Fut>(
    batch: &'a [T],
    group: impl Fn(&'a T) -> K,
    run: F,
) -> Vec<Option<R>>
where
    K: Eq + Hash,
    F: Fn(Vec<usize>) -> Fut,
    Fut: Future<Output = Vec<(usize, R)>>,
{
    let mut order: HashMap<K, usize> = HashMap::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (index, item) in batch.iter().enumerate() {
        let next = groups.len();
        let at = *order.entry(group(item)).or_insert(next);
        if at == next {
            groups.push(Vec::new());
        }
        // `at` is a group pushed before, or the one pushed just now: always in bounds.
        groups[at].push(index);
    }
    let calls = groups.into_iter().map(run);
    let mut replies: Vec<Option<R>> = std::iter::repeat_with(|| None).take(batch.len()).collect();
    for (index, answer) in futures::future::join_all(calls).await.into_iter().flatten() {
        if let Some(slot) = replies.get_mut(index) {
            *slot = Some(answer);
        }
    }
    replies
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn an_idle_coalescer_sends_each_request_alone() {
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = Arc::clone(&sizes);
        let coalescer = Coalescer::start(CoalesceSettings::default(), move |batch: Vec<u32>| {
            seen.lock().expect("not poisoned").push(batch.len());
            async move { batch.into_iter().map(|n| n * 2).collect() }
        });
        for n in 0..5 {
            assert_eq!(coalescer.submit(n).await, Ok(n * 2));
        }
        assert_eq!(*sizes.lock().expect("not poisoned"), vec![1; 5]);
    }

    #[tokio::test]
    async fn requests_submitted_while_every_slot_is_busy_share_a_batch_in_order() {
        let (release, gate) = tokio::sync::watch::channel(false);
        let batches = Arc::new(std::sync::Mutex::new(Vec::<Vec<u32>>::new()));
        let seen = Arc::clone(&batches);
        let settings = CoalesceSettings {
            max_batch: 3,
            max_batches_in_flight: 1,
        };
        let coalescer = Coalescer::start(settings, move |batch: Vec<u32>| {
            seen.lock().expect("not poisoned").push(batch.clone());
            let mut gate = gate.clone();
            async move {
                // The first batch holds the only slot until the test releases it.
                let _ = gate.wait_for(|open| *open).await;
                batch
            }
        });
        let first = {
            let c = coalescer.clone();
            tokio::spawn(async move { c.submit(0).await })
        };
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while batches.lock().expect("not poisoned").is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "no first batch");
            tokio::task::yield_now().await;
        }
        // The only slot is busy: these six queue, in this order, before it frees.
        let queued: Vec<_> = (1..7)
            .map(|n| {
                let (reply, done) = oneshot::channel();
                coalescer.requests.send((n, reply)).expect("running");
                done
            })
            .collect();
        release.send(true).expect("gate open");
        assert_eq!(first.await.expect("no panic"), Ok(0));
        for (n, done) in (1..7).zip(queued) {
            assert_eq!(done.await, Ok(n));
        }
        let batches = batches.lock().expect("not poisoned");
        assert!(batches.iter().all(|b| b.len() <= 3), "{batches:?}");
        assert_eq!(
            batches.len(),
            3,
            "0 alone, then 1 2 3, then 4 5 6: {batches:?}"
        );
        let flat: Vec<u32> = batches.iter().flatten().copied().collect();
        let mut sorted = flat.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..7).collect::<Vec<_>>());
        for batch in batches.iter() {
            assert!(
                batch.windows(2).all(|w| w[0] < w[1]),
                "order kept: {batch:?}"
            );
        }
    }

    #[tokio::test]
    async fn groups_run_apart_and_answer_in_the_batchs_order() {
        let batch = ["a1", "b1", "a2", "c1", "b2"];
        let seen = std::sync::Mutex::new(Vec::new());
        let replies = by_group(
            &batch,
            |item| item.as_bytes()[0],
            |indexes| {
                seen.lock().expect("not poisoned").push(indexes.clone());
                // Group "c" answers nothing: its index stays empty. The others answer
                // backwards: the index says where each reply goes.
                let answers: Vec<(usize, String)> = indexes
                    .iter()
                    .rev()
                    .filter(|&&i| !batch[i].starts_with('c'))
                    .map(|&i| (i, batch[i].to_uppercase()))
                    .collect();
                async move { answers }
            },
        )
        .await;
        assert_eq!(
            *seen.lock().expect("not poisoned"),
            vec![vec![0, 2], vec![1, 4], vec![3]]
        );
        assert_eq!(
            replies,
            [Some("A1"), Some("B1"), Some("A2"), None, Some("B2")].map(|r| r.map(String::from))
        );
    }

    #[tokio::test]
    async fn a_flush_that_answers_wrongly_fails_only_its_own_requests() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let coalescer = Coalescer::start(CoalesceSettings::default(), move |batch: Vec<u32>| {
            let first = counted.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                if first {
                    Vec::new()
                } else {
                    batch
                }
            }
        });
        assert_eq!(coalescer.submit(1).await, Err(CoalesceError::NoReply));
        assert_eq!(coalescer.submit(2).await, Ok(2));
    }
}
