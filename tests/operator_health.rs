//! The operator's health and metrics endpoints, as a kubelet probe and Prometheus see them.
mod support;

use std::time::Duration;

use konnect_sa_operator::sim::Faults;
use support::TestEnv;

fn free_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

async fn get(url: &str) -> Option<(u16, String)> {
    let r = reqwest::get(url).await.ok()?;
    let code = r.status().as_u16();
    Some((code, r.text().await.unwrap_or_default()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readyz_turns_200_once_caches_sync_and_metrics_are_served() {
    let mut env = TestEnv::start().await;
    let addr = free_addr();
    env.start_operator(&["--metrics-addr", &addr]).await;
    let mut ready = false;
    for _ in 0..200 {
        if get(&format!("http://{addr}/readyz"))
            .await
            .is_some_and(|(c, _)| c == 200)
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "/readyz never answered 200");
    let (code, body) = get(&format!("http://{addr}/healthz"))
        .await
        .expect("healthz answers");
    assert_eq!((code, body.as_str()), (200, "ok"));
    let (code, metrics) = get(&format!("http://{addr}/metrics"))
        .await
        .expect("metrics answer");
    assert_eq!(code, 200);
    assert!(
        metrics.contains(
            "konnect_sa_konnect_requests_total{operation=\"get-organizations-me\",code=\"200\"}"
        ),
        "the start-up token check is counted:\n{metrics}"
    );
    env.stop_operator().await;
}

/// README: `/readyz` is 503 while the last Konnect check failed, and 200 again once a later one succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readyz_follows_the_konnect_check() {
    let mut env = TestEnv::start().await;
    let addr = free_addr();
    env.start_operator(&["--metrics-addr", &addr, "--konnect-check-period", "200ms"])
        .await;
    let readyz = format!("http://{addr}/readyz");
    let answers = |code: u16| {
        let url = readyz.clone();
        async move { get(&url).await.is_some_and(|(c, _)| c == code) }
    };
    assert!(until(|| answers(200)).await, "/readyz never answered 200");

    // Konnect fails every call: the next check fails and readiness goes.
    env.set_faults(Faults {
        rate_5xx: 1.0,
        ..Faults::default()
    });
    assert!(
        until(|| answers(503)).await,
        "/readyz stayed 200 with Konnect down"
    );
    let (_, body) = get(&readyz).await.unwrap();
    assert_eq!(body, "not ready");
    let failed_checks = env
        .metrics()
        .value(
            "konnect_sa_konnect_requests_total",
            &[("operation", "get-organizations-me"), ("code", "503")],
        )
        .await;
    assert!(failed_checks >= 1, "the 503 follows a failed check");

    // Konnect recovers: the next check succeeds and readiness returns, with no restart.
    env.set_faults(Faults::default());
    assert!(
        until(|| answers(200)).await,
        "/readyz stayed 503 after Konnect recovered"
    );
    env.stop_operator().await;
}

/// Polls `f` (every 50 ms, up to 30 s) until it is true.
async fn until<F, Fut>(mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..600 {
        support::operator::check_operators();
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
