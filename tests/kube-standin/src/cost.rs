//! What a request costs on a real API server, as a setting (off unless a test or the benchmark
//! turns it on):
//!
//! - `latency`: every request (not watches) waits this long before it is served (the round trip
//!   and the apiserver's own work);
//! - `writes_per_second`: writes are committed one at a time, each taking `1 / writes_per_second`
//!   (etcd's serialised commits): a burst of writes queues, reads do not wait for it;
//! - `seats` and `queue`: API Priority and Fairness. At most `seats` requests are served at once;
//!   up to `queue` more wait for a seat; beyond that, or after waiting `queue_wait`, the answer is
//!   429 with `Retry-After` and a text/plain body, as kube-apiserver's APF filter answers.
//!
//! [`CostModel::calibrated`] is a kube-apiserver v1.36 with etcd 3.6 on a 2-core machine: about
//! 300 writes per second, an isolated write answered in about 3-4 ms (p50 3 ms measured), and the
//! APF limits of the `workload-low` priority level a controller's service account falls into with
//! default flags (400 + 200 in-flight seats x 100 of 245 shares = 245 seats; a flow queues on up
//! to 6 queues of 50; a request waits at most 15 s, a quarter of the 60 s request timeout).
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The cost settings. `Default` is free: no latency, no write limit, no APF.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CostModel {
    /// Added to every request but watches.
    pub latency: Duration,
    /// Writes committed per second, one at a time (0: no limit).
    pub writes_per_second: f64,
    /// Requests served at once (0: no limit, and no 429s).
    pub seats: usize,
    /// Requests that may wait for a seat; one more is answered 429.
    pub queue: usize,
    /// A request that waited this long for a seat is answered 429.
    pub queue_wait: Duration,
    /// The `Retry-After` of a 429, in seconds (kube-apiserver sends 1).
    pub retry_after_s: u64,
}

impl CostModel {
    /// A real API server on a 2-core machine (see the module docs).
    pub fn calibrated() -> Self {
        Self {
            latency: Duration::from_millis(1),
            writes_per_second: 300.0,
            seats: 245,
            queue: 300,
            queue_wait: Duration::from_secs(15),
            retry_after_s: 1,
        }
    }

    /// The time one write holds the commit.
    pub fn write_cost(&self) -> Duration {
        if self.writes_per_second > 0.0 {
            Duration::from_secs_f64(1.0 / self.writes_per_second)
        } else {
            Duration::ZERO
        }
    }
}

/// The model in force and what it needs at run time.
pub struct Cost {
    pub model: CostModel,
    seats: Option<Arc<Semaphore>>,
    waiting: AtomicUsize,
    /// When the commit is free again: writes take turns of `write_cost` each, back to back.
    next_commit: std::sync::Mutex<tokio::time::Instant>,
    /// Requests answered 429 so far.
    pub rejected: AtomicU64,
    /// Every request the model saw (watches apart): when it arrived, what it was, and whether it
    /// was answered 429. Empty while the model is free.
    pub log: std::sync::Mutex<Vec<Arrival>>,
}

/// One request as the cost model saw it.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub at: std::time::Instant,
    /// Method and path, e.g. `GET /apis/konnect-sa.dev/v1alpha1/namespaces/ns/systemaccounts`.
    pub request: String,
    pub rejected: bool,
}

impl Cost {
    pub fn new(model: CostModel) -> Arc<Self> {
        Arc::new(Self {
            seats: (model.seats > 0).then(|| Arc::new(Semaphore::new(model.seats))),
            model,
            waiting: AtomicUsize::new(0),
            next_commit: std::sync::Mutex::new(tokio::time::Instant::now()),
            rejected: AtomicU64::new(0),
            log: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Whether there is anything to pay (the free model costs no task switch).
    fn is_free(&self) -> bool {
        self.model == CostModel::default()
    }

    /// Takes a seat, waits the latency and, for a write, its turn at the commit. The seat is held
    /// until the returned guard is dropped (after the answer is made). `Err` is the 429 to send.
    pub async fn admit(
        &self,
        request: String,
        write: bool,
    ) -> Result<Option<OwnedSemaphorePermit>, Response> {
        if self.is_free() {
            return Ok(None);
        }
        let at = std::time::Instant::now();
        let seat = match &self.seats {
            None => None,
            Some(seats) => match seats.clone().try_acquire_owned() {
                Ok(seat) => Some(seat),
                Err(_) => match self.wait_for_seat(seats.clone()).await {
                    Ok(seat) => Some(seat),
                    Err(too_many) => {
                        self.note(at, request, true);
                        return Err(too_many);
                    }
                },
            },
        };
        self.note(at, request, false);
        // One sleep to a computed deadline: the timer's millisecond rounding then costs latency,
        // never throughput (a sleep per commit would round every 3.3 ms commit up to 4 ms).
        let arrived = tokio::time::Instant::now() + self.model.latency;
        let answer_at = if write && self.model.writes_per_second > 0.0 {
            let mut next = self.next_commit.lock().expect("commit schedule");
            let start = (*next).max(arrived);
            *next = start + self.model.write_cost();
            *next
        } else {
            arrived
        };
        tokio::time::sleep_until(answer_at).await;
        Ok(seat)
    }

    fn note(&self, at: std::time::Instant, request: String, rejected: bool) {
        self.log.lock().expect("cost log").push(Arrival {
            at,
            request,
            rejected,
        });
    }

    async fn wait_for_seat(&self, seats: Arc<Semaphore>) -> Result<OwnedSemaphorePermit, Response> {
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.model.queue {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(self.too_many_requests());
        }
        let got = tokio::time::timeout(self.model.queue_wait, seats.acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        match got {
            Ok(Ok(seat)) => Ok(seat),
            _ => Err(self.too_many_requests()),
        }
    }

    /// kube-apiserver's APF answer: 429, `Retry-After`, a plain-text body (not a Status).
    fn too_many_requests(&self) -> Response {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        (
            StatusCode::TOO_MANY_REQUESTS,
            [
                (
                    header::CONTENT_TYPE,
                    "text/plain; charset=utf-8".to_string(),
                ),
                (header::RETRY_AFTER, self.model.retry_after_s.to_string()),
            ],
            "Too many requests, please try again later.\n",
        )
            .into_response()
    }
}
