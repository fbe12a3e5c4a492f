//! The write fence: with leader election, every Kubernetes and Konnect write first asks whether
//! this replica still holds the Lease by its own clock ([`crate::leader`] opens it until a
//! deadline that each successful renewal pushes out). Reads always pass. Once closed (Lease lost
//! or released) it stays closed: the process stops writing at once and exits.
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use http::{Method, Request, Response};
use kube::client::Body;
use tokio::time::Instant;

use crate::clock::Clock;

/// A write refused because this replica is not (any more) the leader.
#[derive(Debug, Clone, thiserror::Error)]
#[error("write refused: this replica does not hold the leader Lease")]
pub struct Fenced;

#[derive(Debug)]
enum State {
    /// No leader election: every write passes.
    Always,
    /// Open until the instant (None: not yet); `revoked` is final.
    Lease {
        until: Option<Instant>,
        revoked: bool,
    },
}

/// Deadlines are instants of its [`Clock`] (the leader elector's).
#[derive(Debug, Clone)]
pub struct Fence {
    state: Arc<Mutex<State>>,
    clock: Clock,
}

impl Fence {
    /// Without leader election: always open.
    pub fn always() -> Self {
        Self {
            state: Arc::new(Mutex::new(State::Always)),
            clock: Clock::default(),
        }
    }

    /// Closed until [`Fence::extend_to`] opens it; real time.
    pub fn closed() -> Self {
        Self::closed_on(Clock::default())
    }

    /// Closed until [`Fence::extend_to`] opens it; deadlines are judged by `clock`.
    pub fn closed_on(clock: Clock) -> Self {
        Self {
            state: Arc::new(Mutex::new(State::Lease {
                until: None,
                revoked: false,
            })),
            clock,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes pass until `deadline`, an instant of this fence's clock (never moves an open deadline back; no
    /// effect once closed).
    pub fn extend_to(&self, deadline: Instant) {
        if let State::Lease {
            until,
            revoked: false,
        } = &mut *self.state()
        {
            *until = Some(until.map_or(deadline, |u| u.max(deadline)));
        }
    }

    /// Closes for good.
    pub fn close(&self) {
        if let State::Lease { until, revoked } = &mut *self.state() {
            *until = None;
            *revoked = true;
        }
    }

    /// How long writes still pass (None: closed or past the deadline; `Always` answers a year).
    pub fn remaining(&self) -> Option<std::time::Duration> {
        let until = match &*self.state() {
            State::Always => return Some(std::time::Duration::from_secs(86_400 * 365)),
            State::Lease { until, revoked } => until.filter(|_| !revoked)?,
        };
        let now = self.clock.instant();
        (now < until).then(|| until - now)
    }

    pub fn is_open(&self) -> bool {
        self.remaining().is_some()
    }

    /// Ok when a write may go out now.
    pub fn check(&self) -> Result<(), Fenced> {
        if self.is_open() { Ok(()) } else { Err(Fenced) }
    }
}

impl crate::konnect::WriteGate for Fence {
    fn check(&self) -> Result<(), String> {
        Fence::check(self).map_err(|e| e.to_string())
    }
}

/// `client` with every write (any method but GET/HEAD) refused while `fence` is closed.
pub fn fenced_client(client: kube::Client, fence: Fence) -> kube::Client {
    let namespace = client.default_namespace().to_string();
    kube::Client::new(
        FencedService {
            inner: client,
            fence,
        },
        namespace,
    )
}

#[derive(Clone)]
struct FencedService {
    inner: kube::Client,
    fence: Fence,
}

impl tower::Service<Request<Body>> for FencedService {
    type Response = Response<Body>;
    type Error = kube::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, kube::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let write = !matches!(*request.method(), Method::GET | Method::HEAD);
        if write && let Err(e) = self.fence.check() {
            tracing::debug!(method = %request.method(), path = request.uri().path(), "{e}");
            return Box::pin(futures::future::ready(Err(kube::Error::Service(Box::new(
                e,
            )))));
        }
        let client = self.inner.clone();
        Box::pin(async move { client.send(request).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn opens_until_the_deadline_and_closes_for_good() {
        let f = Fence::closed();
        assert!(f.check().is_err(), "closed before the first renewal");
        f.extend_to(Instant::now() + Duration::from_secs(60));
        assert!(f.check().is_ok());
        f.extend_to(Instant::now());
        assert!(f.check().is_ok(), "a deadline never moves back");
        f.close();
        assert!(f.check().is_err());
        f.extend_to(Instant::now() + Duration::from_secs(60));
        assert!(f.check().is_err(), "a late renewal does not reopen it");
        f.close();
        let expired = Fence::closed();
        expired.extend_to(Instant::now() - Duration::from_millis(1));
        assert!(
            expired.check().is_err(),
            "past the deadline without a renewal"
        );
        assert!(Fence::always().check().is_ok());
    }

    #[test]
    fn deadlines_are_judged_by_the_fence_clock() {
        let clock = Clock::frozen();
        let f = Fence::closed_on(clock.clone());
        f.extend_to(clock.instant() + Duration::from_secs(2));
        assert_eq!(f.remaining(), Some(Duration::from_secs(2)));
        clock.advance(Duration::from_millis(1999));
        assert!(f.check().is_ok(), "open until the deadline");
        clock.advance(Duration::from_millis(1));
        assert!(f.check().is_err(), "closed at the deadline by its clock");
    }
}
