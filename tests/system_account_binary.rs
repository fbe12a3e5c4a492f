//! The real `konnect-sa-operator run` binary: it reconciles, stops cleanly on SIGTERM, and fails fast with
//! a clear message on what no retry fixes (a rejected token, no Kubernetes).
mod support;

use std::process::Stdio;
use std::time::Duration;

use konnect_sa_operator::api::SystemAccount;
use support::env::crate_dir;
use support::{TestEnv, ready_of, wait_for};

const T: Duration = Duration::from_secs(30);

/// No token value (any issued one, the admin token, or any raw `kpat_`/`spat_` value) in the output.
fn assert_no_token_values(env: &TestEnv, output: &str) {
    support::leak::assert_clean(&env.token_values(), output, "the binary's output");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn binary_reconciles_and_exits_cleanly_on_sigterm() {
    let env = TestEnv::start().await;
    let log = env.dir.path().join("operator.log");
    let mut child = env.spawn_operator(&[], &log);
    env.apply(
        r#"
apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccount
metadata: {name: bin-bot}
spec: {description: from the binary}
"#,
    );
    let api = env.api::<SystemAccount>();
    let sa = wait_for(&api, "bin-bot", T, |a| {
        ready_of(&a.status.clone().unwrap_or_default().conditions)
            .is_some_and(|(s, _, _)| s == "True")
    })
    .await;
    assert_eq!(
        env.sim
            .state()
            .account_by_name("bin-bot")
            .unwrap()
            .account
            .id,
        sa.status.unwrap().id.unwrap()
    );

    let pid = child.id().expect("running");
    let sent = tokio::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await
        .unwrap();
    assert!(sent.success());
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("exits within 15 s of SIGTERM")
        .unwrap();
    let output = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(0), "clean exit; output:\n{output}");
    assert!(output.contains("shutting down"), "{output}");
    assert_no_token_values(&env, &output);
}

/// Runs the binary to completion with the given environment; returns (exit code, stdout+stderr).
async fn run_binary(
    env: &TestEnv,
    kubeconfig: &std::path::Path,
    token: &str,
) -> (Option<i32>, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_konnect-sa-operator"))
        .args([
            "run",
            "--konnect-url",
            &env.sim.base_url(),
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .current_dir(crate_dir())
        .env("KUBECONFIG", kubeconfig)
        .env("KONNECT_TOKEN", token)
        .env_remove("KONNECT_TOKEN_FILE")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env("HOME", env.dir.path())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .expect("the binary gives up by itself")
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn binary_exits_nonzero_when_the_token_is_rejected() {
    let env = TestEnv::start().await;
    let kubeconfig = env.dir.path().join("kubeconfig");
    env.kube.write_kubeconfig(&kubeconfig).unwrap();
    let wrong = "kpat_notarealtokennotarealtokennotarealtoken0";
    let (code, output) = run_binary(&env, &kubeconfig, wrong).await;
    assert_ne!(code, Some(0), "{output}");
    assert!(code.is_some(), "exited, not killed: {output}");
    assert!(
        output.contains("rejected the token") && output.contains("Identity Admin"),
        "says what is wrong and what to check:\n{output}"
    );
    assert_no_token_values(&env, &output);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn binary_exits_nonzero_without_kubernetes() {
    let env = TestEnv::start().await;
    let nowhere = env.dir.path().join("no-such-kubeconfig");
    let token = env.sim.admin_token();
    let (code, output) = run_binary(&env, &nowhere, token.expose()).await;
    assert_ne!(code, Some(0), "{output}");
    assert!(code.is_some(), "exited, not killed: {output}");
    assert!(
        output.contains("cannot reach Kubernetes") && output.contains("KUBECONFIG"),
        "says what is wrong and what to do:\n{output}"
    );
    assert_no_token_values(&env, &output);
}
