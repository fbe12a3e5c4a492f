//! The Konnect docs' "Manage system accounts" examples, run with curl against the real binary
//! (`konnect-sa-operator sim`), plus the no-token-in-logs checks.
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::Value;

const ADMIN: &str = "kpat_docsexampleadmin000000000000000000000000000000000";

struct Sim {
    child: Child,
    base: String,
}

impl Sim {
    fn start() -> Self {
        assert_binary_has_the_simulator();
        // Pick a free port, then hand it to the binary.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_konnect-sa-operator"))
            .args([
                "sim",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--seed",
                "42",
            ])
            .env("KONNECT_SIM_ADMIN_TOKEN", ADMIN)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the simulator binary");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "simulator did not start listening"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Sim {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    /// SIGTERM, wait, return (exit success, stdout + stderr).
    fn stop(mut self) -> (bool, String) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break self.child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        (status.success(), out)
    }
}

/// CARGO_TARGET_DIR may be shared with other worktrees of this crate: a build there replaces the binary.
fn assert_binary_has_the_simulator() {
    let out = Command::new(env!("CARGO_BIN_EXE_konnect-sa-operator"))
        .args(["sim", "--help"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("--fault-lost"),
        "{} is not this branch's build (shared target dir overwritten by another build?): rerun the test",
        env!("CARGO_BIN_EXE_konnect-sa-operator")
    );
}

struct Reply {
    status: u16,
    content_type: String,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Runs curl with `args`; returns status, content type and body.
fn curl(args: &[&str]) -> Reply {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code} %{content_type}",
        ])
        .args(args)
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, meta) = text.rsplit_once('\n').unwrap();
    let (status, ct) = meta.split_once(' ').unwrap_or((meta, ""));
    Reply {
        status: status.parse().unwrap(),
        content_type: ct.to_string(),
        body: body.to_string(),
    }
}

fn has_fields(v: &Value, fields: &[&str]) {
    for f in fields {
        assert!(v.get(f).is_some(), "missing {f} in {v}");
    }
}

#[test]
fn konnect_docs_examples_work_against_the_binary() {
    let sim = Sim::start();
    let base = sim.base.clone();
    let auth = format!("Authorization: Bearer {ADMIN}");

    // "Create a system account": POST /v2 with only a name. The docs forget the Authorization header.
    let r = curl(&[
        "--request",
        "POST",
        "--url",
        &format!("{base}/v2/system-accounts"),
        "--header",
        &auth,
        "--data",
        "{\n  \"name\": \"Example System Account\"}",
    ]);
    assert_eq!(r.status, 201, "{}", r.body);
    let account = r.json();
    has_fields(&account, &["id", "name", "created_at", "updated_at"]);
    assert_eq!(account["name"], "Example System Account");
    assert_eq!(account["description"], "");
    let account_id = account["id"].as_str().unwrap().to_string();

    // "Generate a system account access token" with the docs' exact body: its expires_at
    // (2025-05-07) is in the past now, so the simulator refuses it like Konnect would.
    let token_url = format!("{base}/v3/system-accounts/{account_id}/access-tokens");
    let r = curl(&[
        "--request",
        "POST",
        "--url",
        &token_url,
        "--header",
        &auth,
        "--header",
        "content-type: application/json",
        "--data",
        r#"{"name":"Sample Access Token","expires_at":"2025-05-07T14:44:48.645Z"}"#,
    ]);
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.content_type, "application/problem+json");
    assert_eq!(r.json()["invalid_parameters"][0]["field"], "expires_at");

    // The same body with a future expiry (same format, fractional seconds included).
    let expires = (Timestamp::now() + SignedDuration::from_hours(24 * 90))
        .strftime("%Y-%m-%dT%H:%M:%S.645Z")
        .to_string();
    let r = curl(&[
        "--request",
        "POST",
        "--url",
        &token_url,
        "--header",
        &auth,
        "--header",
        "content-type: application/json",
        "--data",
        &format!(r#"{{"name":"Sample Access Token","expires_at":"{expires}"}}"#),
    ]);
    assert_eq!(r.status, 201, "{}", r.body);
    let token = r.json();
    has_fields(
        &token,
        &[
            "id",
            "name",
            "created_at",
            "expires_at",
            "updated_at",
            "token",
        ],
    );
    // Normalised to UTC whole seconds.
    assert_eq!(
        token["expires_at"].as_str().unwrap(),
        format!("{}Z", &expires[..19])
    );
    let spat = token["token"].as_str().unwrap().to_string();
    assert!(spat.starts_with("spat_") && spat.len() == 55, "token shape");

    // "Assign a role": the docs write the id as `:<id>` and send the body with curl's default
    // (form) content type, no JSON content type.
    let r = curl(&[
        "--request",
        "POST",
        "--url",
        &format!("{base}/v3/system-accounts/:{account_id}/assigned-roles"),
        "--header",
        &auth,
        "--data",
        "{\n  \"role_name\": \"Viewer\",\n  \"entity_id\": \"817d0422-45c9-4d88-8d64-45aef05c1ae7\",\n  \"entity_type_name\": \"Control Plane Groups\",\n  \"entity_region\": \"eu\"\n}",
    ]);
    assert_eq!(r.status, 201, "{}", r.body);
    let role = r.json();
    has_fields(
        &role,
        &[
            "id",
            "role_name",
            "entity_id",
            "entity_type_name",
            "entity_region",
        ],
    );
    assert_eq!(role["entity_type_name"], "Control Plane Groups");

    // "Assign a system account to a team": the docs assume an existing team and omit the body;
    // the spec's body is `{"id": "<account id>"}`, so we send it (no content type at all here).
    let r = curl(&[
        "--request",
        "POST",
        "--url",
        &format!("{base}/v3/teams"),
        "--header",
        &auth,
        "--header",
        "content-type: application/json",
        "--data",
        r#"{"name":"IDM - Developers"}"#,
    ]);
    assert_eq!(r.status, 201, "{}", r.body);
    let team_id = r.json()["id"].as_str().unwrap().to_string();
    let r = curl(&[
        "--request",
        "POST",
        "--url",
        &format!("{base}/v3/teams/:{team_id}/system-accounts"),
        "--header",
        &auth,
        "--header",
        "Content-Type:",
        "--data",
        &format!(r#"{{"id": "{account_id}"}}"#),
    ]);
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body, "Created");

    // The issued spat_ authenticates; a wrong one does not.
    let me = format!("{base}/v3/organizations/me");
    let r = curl(&[
        "--url",
        &me,
        "--header",
        &format!("Authorization: Bearer {spat}"),
    ]);
    assert_eq!(r.status, 200, "{}", r.body);
    has_fields(&r.json(), &["id", "name"]);
    let wrong = format!("spat_{}", "0".repeat(50));
    let r = curl(&[
        "--url",
        &me,
        "--header",
        &format!("Authorization: Bearer {wrong}"),
    ]);
    assert_eq!(r.status, 401);
    assert_eq!(r.content_type, "application/problem+json");
    has_fields(&r.json(), &["status", "title", "instance", "detail"]);
    let r = curl(&["--url", &me]);
    assert_eq!(r.status, 401);

    // The state dump shows the token without its value.
    let r = curl(&["--url", &format!("{base}/_sim/state"), "--header", &auth]);
    assert_eq!(r.status, 200);
    assert!(!r.body.contains(&spat));
    assert_eq!(r.json()["accounts"][0]["tokens"][0]["live"], true);

    let (clean_exit, output) = sim.stop();
    assert!(clean_exit, "graceful shutdown on SIGTERM failed:\n{output}");
    assert!(
        output.contains("post-system-accounts-id-access-tokens"),
        "requests are logged:\n{output}"
    );
    assert!(
        !output.contains("spat_"),
        "a spat_ value leaked into the output:\n{output}"
    );
    assert!(
        !output.contains("kpat_"),
        "a kpat_ value leaked into the output:\n{output}"
    );
}

#[test]
fn a_bad_seed_file_or_rate_is_refused_with_a_message() {
    assert_binary_has_the_simulator();
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("seed.yaml");
    std::fs::write(&seed, "teams: [{nme: typo}]\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_konnect-sa-operator"))
        .args(["sim", "--listen", "127.0.0.1:0", "--seed-file"])
        .arg(&seed)
        .env("KONNECT_SIM_ADMIN_TOKEN", ADMIN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid seed file"), "{err}");
    assert!(!err.contains("kpat_"), "{err}");

    let out = Command::new(env!("CARGO_BIN_EXE_konnect-sa-operator"))
        .args(["sim", "--listen", "127.0.0.1:0", "--fault-5xx", "5"])
        .env("KONNECT_SIM_ADMIN_TOKEN", ADMIN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("rate_5xx"));
}
