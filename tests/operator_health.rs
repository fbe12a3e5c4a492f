//! The operator's health and metrics endpoints, as a kubelet probe and Prometheus see them.
mod support;

use std::time::Duration;

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
