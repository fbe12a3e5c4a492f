//! An operator running inside the test process. Its panic, error or unasked-for exit fails the test where it
//! happens: `wait_for` and `eventually` check it on every poll, `stop` and the end of the `TestEnv` re-raise it,
//! so a test neither times out 30 s later for an unrelated reason nor passes a "nothing happened" check
//! against a dead operator.
use std::cell::RefCell;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use konnect_sa_operator::konnect::TokenValue;
use konnect_sa_operator::run::RunArgs;

thread_local! {
    // The operators started from this test's thread (the thread a `#[tokio::test]` body runs on).
    static WATCHED: RefCell<Vec<Arc<Fate>>> = const { RefCell::new(Vec::new()) };
}

/// How an operator task ended, once it has.
#[derive(Default)]
pub struct Fate {
    failure: Mutex<Option<String>>,
    stopping: AtomicBool,
}

impl Fate {
    /// Panics with the operator's failure, if it failed.
    pub fn raise(&self) {
        let failure = self
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(failure) = failure {
            panic!("{failure}");
        }
    }
}

/// Panics if an operator started from this thread has failed (called on every poll of the wait helpers).
pub fn check_operators() {
    let failed = WATCHED.with(|w| {
        w.borrow()
            .iter()
            .find_map(|f| f.failure.lock().unwrap_or_else(|e| e.into_inner()).clone())
    });
    if let Some(failure) = failed {
        panic!("{failure}");
    }
}

pub struct InProcess {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    fate: Arc<Fate>,
}

impl InProcess {
    /// Runs `run_with` on a task of the current runtime until `stop`.
    pub fn spawn(client: kube::Client, token: TokenValue, args: RunArgs) -> InProcess {
        let fate = Arc::new(Fate::default());
        WATCHED.with(|w| w.borrow_mut().push(fate.clone()));
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let record = fate.clone();
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = rx.await;
            };
            let run = konnect_sa_operator::run::run_with(client, token, args, shutdown);
            let failure = match AssertUnwindSafe(run).catch_unwind().await {
                Ok(Ok(())) if record.stopping.load(Ordering::SeqCst) => None,
                Ok(Ok(())) => Some("the operator stopped without being asked to".to_string()),
                Ok(Err(e)) => Some(format!("the operator stopped with an error: {e}")),
                Err(panic) => Some(format!(
                    "the operator panicked: {}",
                    panic
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| panic.downcast_ref::<&str>().copied())
                        .unwrap_or("(no message)")
                )),
            };
            *record.failure.lock().unwrap_or_else(|e| e.into_inner()) = failure;
        });
        InProcess {
            stop: Some(stop),
            task: Some(task),
            fate,
        }
    }

    pub fn fate(&self) -> &Fate {
        &self.fate
    }

    /// Asks the operator to stop, waits for it (at most 10 s) and re-raises its failure, if any.
    pub async fn stop(mut self) {
        self.fate.stopping.store(true, Ordering::SeqCst);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        let fate = self.fate.clone();
        WATCHED.with(|w| w.borrow_mut().retain(|f| !Arc::ptr_eq(f, &fate)));
        if !std::thread::panicking() {
            fate.raise();
        }
    }
}

#[test]
#[should_panic(expected = "the operator panicked: boom")]
fn a_failed_operator_fails_the_next_poll() {
    let fate = Arc::new(Fate::default());
    WATCHED.with(|w| w.borrow_mut().push(fate.clone()));
    check_operators();
    *fate.failure.lock().unwrap() = Some("the operator panicked: boom".into());
    check_operators();
}
