//! Client behaviour against a scripted HTTP server: retries, Retry-After, lost responses, non-idempotent POSTs,
//! pagination, timeouts, the concurrency limit, and redaction. Deterministic (no random faults).
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use konnect_sa_operator::konnect::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const TOKEN: &str = "kpat_stubSECRET0123456789";

/// What the stub does with the next request.
#[derive(Clone)]
enum Step {
    Reply {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: String,
    },
    /// Read the request, then close the connection without answering (a lost response).
    Drop,
    /// Answer after a delay.
    Slow(Duration, Box<Step>),
}

fn json_reply(status: u16, body: Value) -> Step {
    let ct = if status >= 400 {
        "application/problem+json"
    } else {
        "application/json"
    };
    Step::Reply {
        status,
        headers: vec![("content-type", ct.into())],
        body: body.to_string(),
    }
}

fn problem(status: u16, detail: &str) -> Step {
    json_reply(
        status,
        json!({"status": status, "title": "t", "instance": "konnect:trace:1", "detail": detail}),
    )
}

fn rate_limited(retry_after: &str) -> Step {
    Step::Reply {
        status: 429,
        headers: vec![
            ("content-type", "application/json; charset=utf-8".into()),
            ("retry-after", retry_after.into()),
        ],
        body: r#"{"message":"API rate limit exceeded"}"#.into(),
    }
}

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    /// Path and query as sent.
    target: String,
    authorization: Option<String>,
    body: String,
}

#[derive(Default)]
struct Stub {
    script: Mutex<VecDeque<Step>>,
    seen: Mutex<Vec<Seen>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl Stub {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// A one-request-per-connection HTTP/1.1 server that plays `script` in order (then 500s).
async fn serve(script: Vec<Step>) -> (String, Arc<Stub>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stub = Arc::new(Stub {
        script: Mutex::new(script.into()),
        ..Stub::default()
    });
    let s = stub.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let stub = s.clone();
            tokio::spawn(async move {
                let Some(seen) = read_request(&mut conn).await else {
                    return;
                };
                let now = stub.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                stub.max_in_flight.fetch_max(now, Ordering::SeqCst);
                stub.seen.lock().unwrap().push(seen);
                let step = stub
                    .script
                    .lock()
                    .unwrap()
                    .pop_front()
                    .unwrap_or_else(|| problem(500, "script exhausted"));
                play(&mut conn, step).await;
                stub.in_flight.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (format!("http://{addr}"), stub)
}

async fn read_request(conn: &mut tokio::net::TcpStream) -> Option<Seen> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.lines();
    let mut first = lines.next()?.split_whitespace();
    let (method, target) = (first.next()?.to_string(), first.next()?.to_string());
    let mut length = 0usize;
    let mut authorization = None;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = v.trim().parse().ok()?,
                "authorization" => authorization = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    while buf.len() < head_end + length {
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(Seen {
        method,
        target,
        authorization,
        body: String::from_utf8_lossy(&buf[head_end..]).to_string(),
    })
}

async fn play(conn: &mut tokio::net::TcpStream, step: Step) {
    match step {
        Step::Drop => {}
        Step::Slow(delay, inner) => {
            tokio::time::sleep(delay).await;
            Box::pin(play(conn, *inner)).await;
        }
        Step::Reply {
            status,
            headers,
            body,
        } => {
            let mut out = format!(
                "HTTP/1.1 {status} X\r\nconnection: close\r\ncontent-length: {}\r\n",
                body.len()
            );
            for (k, v) in headers {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            out.push_str("\r\n");
            out.push_str(&body);
            let _ = conn.write_all(out.as_bytes()).await;
            let _ = conn.shutdown().await;
        }
    }
}

#[derive(Default)]
struct Recorder {
    attempts: Mutex<Vec<(&'static str, Option<u16>)>>,
    waits: Mutex<Vec<(RetryWait, Duration)>>,
}

impl RequestObserver for Recorder {
    fn observe(&self, operation: &'static str, status: Option<u16>, _elapsed: Duration) {
        self.attempts.lock().unwrap().push((operation, status));
    }

    fn waiting(&self, _operation: &'static str, why: RetryWait, wait: Duration) {
        self.waits.lock().unwrap().push((why, wait));
    }
}

/// A client whose attempts and waits between attempts are recorded: the waits are asserted, not the
/// wall-clock time a test took.
fn recorded_client(
    base: &str,
    tune: impl FnOnce(&mut ClientConfig),
) -> (KonnectClient, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let observer: Arc<dyn RequestObserver> = recorder.clone();
    let c = client(base, |cfg| {
        cfg.observer = Some(observer);
        tune(cfg);
    });
    (c, recorder)
}

fn client(base: &str, tune: impl FnOnce(&mut ClientConfig)) -> KonnectClient {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = ClientConfig::new(base, TokenValue::new(TOKEN));
    config.request_timeout = Duration::from_secs(5);
    config.max_attempts = 4;
    tune(&mut config);
    KonnectClient::new(config).unwrap()
}

fn org() -> Step {
    json_reply(
        200,
        json!({"id": "5f9fd312-a987-4628-b4c5-bb4f4fddd5f7", "name": "Org"}),
    )
}

fn account(id: &str, name: &str) -> Value {
    json!({"id": id, "name": name, "description": "d", "konnect_managed": false})
}

fn page(data: Vec<Value>, number: f64, size: f64, total: f64) -> Step {
    json_reply(
        200,
        json!({"meta": {"page": {"number": number, "size": size, "total": total}}, "data": data}),
    )
}

#[tokio::test]
async fn sends_bearer_token_and_honours_retry_after_on_429() {
    let (base, stub) = serve(vec![rate_limited("1"), org()]).await;
    let (c, recorder) = recorded_client(&base, |_| {});
    let started = std::time::Instant::now();
    let me = c.me().await.unwrap();
    assert_eq!(me.name, "Org");
    // It really waited (a lower bound: a busy machine only makes it longer).
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let seen = stub.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].target, "/v3/organizations/me");
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert_eq!(
        *recorder.attempts.lock().unwrap(),
        vec![
            ("get-organizations-me", Some(429)),
            ("get-organizations-me", Some(200))
        ]
    );
    // Between the two: exactly the server's Retry-After, no backoff of our own.
    assert_eq!(
        *recorder.waits.lock().unwrap(),
        vec![(RetryWait::RetryAfter, Duration::from_secs(1))]
    );
}

#[tokio::test]
async fn a_429_longer_than_max_retry_wait_returns_rate_limited_at_once() {
    let (base, stub) = serve(vec![rate_limited("120"), org()]).await;
    let (c, recorder) = recorded_client(&base, |cfg| cfg.max_retry_wait = Duration::from_secs(30));
    let err = c.me().await.unwrap_err();
    assert!(
        matches!(err, KonnectError::RateLimited { retry_after } if retry_after == Duration::from_secs(120)),
        "{err:?}"
    );
    assert_eq!(*recorder.waits.lock().unwrap(), vec![], "no wait at all");
    assert_eq!(stub.seen().len(), 1);
}

#[tokio::test]
async fn server_errors_and_lost_responses_are_retried_with_backoff_for_reads() {
    let (base, stub) = serve(vec![
        problem(503, "down"),
        Step::Drop,
        problem(502, "bad gw"),
        org(),
    ])
    .await;
    let (c, recorder) = recorded_client(&base, |cfg| cfg.max_attempts = 4);
    let started = std::time::Instant::now();
    assert_eq!(c.me().await.unwrap().name, "Org");
    assert_eq!(stub.seen().len(), 4);
    let waited: Duration = recorder.waits.lock().unwrap().iter().map(|(_, w)| *w).sum();
    assert!(
        started.elapsed() >= waited,
        "slept what it said: {waited:?}"
    );
    // Three backoffs, exponential from 200 ms, each with up to 100% jitter added.
    let waits = recorder.waits.lock().unwrap().clone();
    assert_eq!(waits.len(), 3, "{waits:?}");
    for ((why, wait), base_ms) in waits.into_iter().zip([200, 400, 800]) {
        assert_eq!(why, RetryWait::Backoff);
        let base = Duration::from_millis(base_ms);
        assert!(
            wait >= base && wait <= base * 2,
            "{wait:?} for base {base:?}"
        );
    }
}

#[tokio::test]
async fn attempts_are_bounded() {
    let (base, stub) = serve(vec![problem(503, "down"); 10]).await;
    let c = client(&base, |cfg| cfg.max_attempts = 3);
    let err = c.get_system_account("a1").await.unwrap_err();
    assert!(
        matches!(err, KonnectError::Server { status: 503, .. }),
        "{err:?}"
    );
    assert_eq!(stub.seen().len(), 3);

    let (base, stub) = serve(vec![Step::Drop; 10]).await;
    let c = client(&base, |cfg| cfg.max_attempts = 2);
    let err = c.get_system_account("a1").await.unwrap_err();
    assert!(matches!(err, KonnectError::Transport(_)), "{err:?}");
    assert_eq!(stub.seen().len(), 2);
}

#[tokio::test]
async fn per_attempt_timeout() {
    // Each reply would come after 3 s, and be a 200: only the 300 ms timeout can make this fail.
    let slow = Step::Slow(Duration::from_secs(3), Box::new(org()));
    let (base, stub) = serve(vec![slow.clone(), slow]).await;
    let (c, recorder) = recorded_client(&base, |cfg| {
        cfg.request_timeout = Duration::from_millis(300);
        cfg.max_attempts = 2;
    });
    let err = c.me().await.unwrap_err();
    assert!(
        matches!(&err, KonnectError::Transport(m) if m.contains("timed out")),
        "{err}"
    );
    assert_eq!(stub.seen().len(), 2);
    assert_eq!(
        *recorder.attempts.lock().unwrap(),
        vec![
            ("get-organizations-me", None),
            ("get-organizations-me", None)
        ],
        "both attempts ended without a reply"
    );
}

fn token_created() -> Step {
    json_reply(
        201,
        json!({"id": "0b0c6c1e-1111-4b4b-9c9c-222222222222", "name": "t", "expires_at": "2027-01-01T00:00:00Z",
               "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
               "token": "spat_createdSECRET000000000000"}),
    )
}

#[tokio::test]
async fn token_create_is_never_repeated_after_a_possible_execution() {
    let body = CreateAccessToken {
        name: "t".into(),
        expires_at: "2027-01-01T00:00:00Z".into(),
    };
    for first in [problem(503, "down"), Step::Drop, problem(500, "boom")] {
        let (base, stub) = serve(vec![first, token_created()]).await;
        let c = client(&base, |cfg| cfg.max_attempts = 5);
        let err = c.create_access_token("acc", &body).await.unwrap_err();
        assert!(err.is_transient(), "{err:?}");
        assert_eq!(stub.seen().len(), 1, "token create was re-sent");
    }
    // A 429 was refused before running: waiting and re-sending is safe.
    let (base, stub) = serve(vec![rate_limited("0"), token_created()]).await;
    let c = client(&base, |_| {});
    let created = c.create_access_token("acc", &body).await.unwrap();
    assert_eq!(created.token.expose(), "spat_createdSECRET000000000000");
    assert!(!format!("{created:?}").contains("spat_"));
    let seen = stub.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].method, "POST");
    assert_eq!(seen[1].target, "/v3/system-accounts/acc/access-tokens");
    assert_eq!(
        serde_json::from_str::<Value>(&seen[1].body).unwrap(),
        json!({"name": "t", "expires_at": "2027-01-01T00:00:00Z"})
    );
}

#[tokio::test]
async fn account_create_recovers_its_own_lost_create_but_not_a_first_conflict() {
    let body = CreateSystemAccount {
        name: "sa-1".into(),
        description: "d".into(),
        konnect_managed: Some(false),
    };
    let (base, stub) = serve(vec![
        Step::Drop,
        problem(409, "already exists"),
        page(vec![account("id-1", "sa-1")], 1.0, 100.0, 1.0),
    ])
    .await;
    let c = client(&base, |_| {});
    let created = c.create_system_account(&body).await.unwrap();
    assert_eq!(
        created,
        Created {
            value: serde_json::from_value(account("id-1", "sa-1")).unwrap(),
            recovered: true
        }
    );
    let seen = stub.seen();
    assert_eq!(seen.len(), 3);
    assert!(
        seen[2].target.starts_with("/v3/system-accounts?"),
        "{}",
        seen[2].target
    );
    assert!(
        seen[2].target.contains("filter%5Bname%5D%5Beq%5D=sa-1"),
        "{}",
        seen[2].target
    );

    let (base, stub) = serve(vec![problem(409, "already exists")]).await;
    let c = client(&base, |_| {});
    let err = c.create_system_account(&body).await.unwrap_err();
    assert!(err.is_conflict(), "{err:?}");
    assert_eq!(stub.seen().len(), 1);

    let (base, _) = serve(vec![json_reply(201, account("id-2", "sa-1"))]).await;
    let created = client(&base, |_| {})
        .create_system_account(&body)
        .await
        .unwrap();
    assert!(!created.recovered);
    assert_eq!(created.value.id, "id-2");
}

#[tokio::test]
async fn retried_membership_and_role_conflicts_mean_done() {
    let (base, _) = serve(vec![problem(503, "down"), problem(409, "already a member")]).await;
    client(&base, |_| {})
        .add_team_member("team", "acc")
        .await
        .unwrap();
    let (base, _) = serve(vec![problem(409, "already a member")]).await;
    assert!(
        client(&base, |_| {})
            .add_team_member("team", "acc")
            .await
            .unwrap_err()
            .is_conflict()
    );

    let role = RoleTuple {
        role_name: "Viewer".into(),
        entity_type_name: "Control Planes".into(),
        entity_id: "*".into(),
        entity_region: "eu".into(),
    };
    let assigned = json!({"id": "r-1", "role_name": "Viewer", "entity_type_name": "Control Planes", "entity_id": "*", "entity_region": "eu"});
    let other = json!({"id": "r-0", "role_name": "Admin", "entity_type_name": "Control Planes", "entity_id": "*", "entity_region": "eu"});
    let (base, stub) = serve(vec![
        Step::Drop,
        problem(409, "already assigned"),
        page(vec![other, assigned], 1.0, 100.0, 2.0),
    ])
    .await;
    let got = client(&base, |_| {})
        .assign_role("acc", &role)
        .await
        .unwrap();
    assert_eq!(got.id, "r-1");
    assert_eq!(
        stub.seen()[2].target,
        "/v3/system-accounts/acc/assigned-roles"
    );
    let (base, _) = serve(vec![problem(409, "already assigned")]).await;
    assert!(
        client(&base, |_| {})
            .assign_role("acc", &role)
            .await
            .unwrap_err()
            .is_conflict()
    );
}

#[tokio::test]
async fn a_retried_delete_that_finds_nothing_is_done() {
    let (base, _) = serve(vec![Step::Drop, problem(404, "gone")]).await;
    client(&base, |_| {})
        .delete_system_account("a1")
        .await
        .unwrap();
    let (base, _) = serve(vec![problem(404, "gone")]).await;
    assert!(
        client(&base, |_| {})
            .delete_system_account("a1")
            .await
            .unwrap_err()
            .is_not_found()
    );
    let (base, stub) = serve(vec![Step::Reply {
        status: 204,
        headers: vec![],
        body: String::new(),
    }])
    .await;
    client(&base, |_| {})
        .delete_access_token("a1", "t1")
        .await
        .unwrap();
    assert_eq!(stub.seen()[0].method, "DELETE");
    assert_eq!(
        stub.seen()[0].target,
        "/v3/system-accounts/a1/access-tokens/t1"
    );
}

#[tokio::test]
async fn pagination_follows_pages_with_float_meta_and_stops() {
    let full: Vec<Value> = (0..100)
        .map(|i| account(&format!("a{i}"), &format!("n{i}")))
        .collect();
    let rest: Vec<Value> = (100..150)
        .map(|i| account(&format!("a{i}"), &format!("n{i}")))
        .collect();
    let (base, stub) = serve(vec![
        page(full.clone(), 1.0, 100.0, 150.0),
        page(rest, 2.0, 100.0, 150.0),
    ])
    .await;
    let filter = AccountFilter {
        name_eq: None,
        konnect_managed: Some(false),
    };
    let all = client(&base, |_| {})
        .list_system_accounts(&filter)
        .await
        .unwrap();
    assert_eq!(all.len(), 150);
    let seen = stub.seen();
    assert_eq!(seen.len(), 2);
    assert!(
        seen[0].target.contains("filter%5Bkonnect_managed%5D=false"),
        "{}",
        seen[0].target
    );
    assert!(
        seen[0].target.contains("page%5Bsize%5D=100")
            && seen[0].target.contains("page%5Bnumber%5D=1")
    );
    assert!(
        seen[1].target.contains("page%5Bnumber%5D=2"),
        "{}",
        seen[1].target
    );

    // Exactly full pages: `number * size >= total` ends it without an extra empty page.
    let (base, stub) = serve(vec![page(full.clone(), 1.0, 100.0, 100.0)]).await;
    assert_eq!(
        client(&base, |_| {})
            .list_system_accounts(&filter)
            .await
            .unwrap()
            .len(),
        100
    );
    assert_eq!(stub.seen().len(), 1);
}

#[tokio::test]
async fn pagination_has_a_hard_page_cap() {
    // A server that always claims more: the client stops with an error instead of looping.
    let one = vec![account("a", "n")];
    let script: Vec<Step> = (1..=1001)
        .map(|n| page(one.clone(), n as f64, 1.0, 1e9))
        .collect();
    let (base, stub) = serve(script).await;
    let err = client(&base, |_| {})
        .list_system_accounts(&AccountFilter::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, KonnectError::Decode(m) if m.contains("did not end")),
        "{err}"
    );
    assert_eq!(stub.seen().len(), 1000);
}

#[tokio::test]
async fn ids_are_escaped_into_one_path_segment() {
    let (base, stub) = serve(vec![problem(404, "no")]).await;
    let _ = client(&base, |_| {})
        .get_system_account("../teams?x=1")
        .await;
    assert_eq!(
        stub.seen()[0].target,
        "/v3/system-accounts/..%2Fteams%3Fx=1"
    );
}

#[tokio::test]
async fn non_json_errors_are_clear_and_never_carry_a_token() {
    let (base, _) = serve(vec![Step::Reply {
        status: 502,
        headers: vec![("content-type", "text/html".into())],
        body: "<html>502 Bad Gateway spat_leakedVALUE</html>".into(),
    }])
    .await;
    let c = client(&base, |cfg| cfg.max_attempts = 1);
    let err = c.me().await.unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(
        text.contains("502") && text.contains("non-JSON body (text/html)"),
        "{text}"
    );
    assert!(!text.contains("spat_leaked"), "{text}");
}

#[tokio::test]
async fn concurrency_is_limited() {
    let slow = Step::Slow(Duration::from_millis(200), Box::new(org()));
    let (base, stub) = serve(vec![slow; 6]).await;
    let c = client(&base, |cfg| cfg.max_concurrency = 2);
    let calls = (0..6).map(|_| {
        let c = c.clone();
        async move { c.me().await }
    });
    for r in futures::future::join_all(calls).await {
        r.unwrap();
    }
    assert_eq!(stub.max_in_flight.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn config_rules_and_redacted_debug() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = ClientConfig::new("https://eu.api.konghq.com/v3/", TokenValue::new(TOKEN));
    let c = KonnectClient::new(config.clone()).unwrap();
    assert_eq!(c.base_url(), "https://global.api.konghq.com");
    for text in [format!("{config:?}"), format!("{c:?}")] {
        assert!(!text.contains("kpat_"), "{text}");
        assert!(
            text.contains("global.api.konghq.com") || text.contains("eu.api.konghq.com"),
            "{text}"
        );
    }
    let err = KonnectClient::new(ClientConfig::new(
        "http://konnect.example.com",
        TokenValue::new(TOKEN),
    ))
    .unwrap_err();
    assert!(matches!(err, KonnectError::Config(_)), "{err:?}");
    let err = KonnectClient::new(ClientConfig::new(
        "https://x.example.com",
        TokenValue::new("kpat_bad\nvalue"),
    ))
    .unwrap_err();
    assert!(
        matches!(&err, KonnectError::Config(m) if !m.contains("kpat_")),
        "{err:?}"
    );
}
