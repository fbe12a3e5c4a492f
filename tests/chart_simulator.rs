//! The chart's `simulator.enabled` test bed, rendered by Helm itself (its Go SDK, through the helm-python-sdk wheel
//! and .ci/helm.py; .ci/run installs it and sets HELM_PYTHON): off, the operator's pod is what it was; on, the
//! simulator runs as a hardened native sidecar on loopback, seeded from the rendered ConfigMap, and the operator
//! talks to it with the same admin token. The rendered seed and token then start the real `sim` binary.
use std::collections::BTreeSet;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use konnect_sa_operator::sim::{SeedData, StateDump};
use serde_json::{Value, json};

const CHART: &str = "charts/konnect-sa-operator";
const RELEASE: &str = "kso";
const NS: &str = "ops";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A Python with helm_python importable; None (the tests skip) outside CI when there is none.
fn helm_python() -> Option<PathBuf> {
    let candidates = std::env::var_os("HELM_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain([root().join("target/ci-lint-venv/bin/python")]);
    for python in candidates {
        let ok = Command::new(&python)
            .args(["-c", "import helm_python"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(python);
        }
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true: these tests need helm-python-sdk (HELM_PYTHON, set by .ci/run)"
    );
    eprintln!("skipped: no Python with helm-python-sdk (set HELM_PYTHON, or run .ci/run once)");
    None
}

/// `helm install --dry-run` of the chart with `values`: the rendered manifests, or Helm's error.
fn try_render(python: &PathBuf, values: &Value) -> Result<Vec<(String, Value)>, String> {
    let out = Command::new(python)
        .arg(root().join(".ci/helm.py"))
        .args(["render", &root().join(CHART).to_string_lossy(), RELEASE, NS])
        .arg(values.to_string())
        .output()
        .expect("run .ci/helm.py");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let files: std::collections::BTreeMap<String, String> =
        serde_json::from_slice(&out.stdout).unwrap();
    let mut docs = Vec::new();
    for (path, text) in files {
        if path.ends_with("NOTES.txt") {
            docs.push((path, Value::String(text)));
            continue;
        }
        for d in serde_yaml::Deserializer::from_str(&text) {
            let v = <Value as serde::Deserialize>::deserialize(d).unwrap();
            if !v.is_null() {
                docs.push((path.clone(), v));
            }
        }
    }
    Ok(docs)
}

fn render(python: &PathBuf, values: Value) -> Vec<(String, Value)> {
    try_render(python, &values).unwrap_or_else(|e| panic!("render {values}: {e}"))
}

fn object<'a>(docs: &'a [(String, Value)], kind: &str) -> Vec<&'a Value> {
    docs.iter()
        .map(|(_, v)| v)
        .filter(|v| v["kind"] == kind)
        .collect()
}

fn pod_spec(docs: &[(String, Value)]) -> Value {
    let deployments = object(docs, "Deployment");
    assert_eq!(deployments.len(), 1);
    deployments[0]["spec"]["template"]["spec"].clone()
}

fn notes(docs: &[(String, Value)]) -> String {
    docs.iter()
        .find(|(p, _)| p.ends_with("NOTES.txt"))
        .and_then(|(_, v)| v.as_str().map(str::to_string))
        .expect("NOTES.txt")
}

fn args(container: &Value) -> Vec<String> {
    serde_json::from_value(container["args"].clone()).unwrap()
}

fn arg<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .find_map(|a| a.strip_prefix(flag)?.strip_prefix('='))
}

fn on() -> Value {
    json!({"simulator": {"enabled": true}})
}

/// What the chart renders with the simulator on, taken back out: the pod it rendered with it off.
fn without_simulator(docs: &[(String, Value)]) -> Value {
    let mut pod = object(docs, "Deployment")[0]["spec"]["template"].clone();
    let spec = pod["spec"].as_object_mut().unwrap();
    spec.remove("initContainers");
    let volumes = spec["volumes"].as_array_mut().unwrap();
    volumes.retain(|v| v["name"] != "konnect-sim-seed");
    volumes[0]["secret"]["secretName"] = "konnect-sa-operator-token".into();
    let manager = &mut spec["containers"][0];
    for a in manager["args"].as_array_mut().unwrap() {
        if a.as_str().unwrap().starts_with("--konnect-url=") {
            *a = "--konnect-url=https://global.api.konghq.com".into();
        }
    }
    pod["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("annotations");
    pod
}

#[test]
fn off_by_default_and_then_the_pod_is_unchanged() {
    let Some(py) = helm_python() else { return };
    let off = render(&py, json!({}));
    let on = render(&py, on());
    let pod = pod_spec(&off);
    assert!(pod.get("initContainers").is_none(), "no sidecar when off");
    assert_eq!(pod["containers"].as_array().unwrap().len(), 1);
    assert!(object(&off, "ConfigMap").is_empty());
    assert!(
        object(&off, "Secret").is_empty(),
        "konnect.token.existingSecret: no Secret made"
    );

    // On: the same objects plus the simulator's Secret and seed ConfigMap; the pod differs only where the
    // simulator goes in (sidecar, seed volume, Konnect URL, token Secret, seed checksum).
    let names = |docs: &[(String, Value)]| -> BTreeSet<String> {
        docs.iter()
            .filter(|(_, v)| v.is_object())
            .map(|(_, v)| format!("{}/{}", v["kind"], v["metadata"]["name"]))
            .collect()
    };
    let added: Vec<_> = names(&on).difference(&names(&off)).cloned().collect();
    assert_eq!(
        added,
        [
            "\"ConfigMap\"/\"kso-konnect-sa-operator-simulator-seed\"",
            "\"Secret\"/\"kso-konnect-sa-operator-simulator\"",
        ]
    );
    assert!(names(&off).is_subset(&names(&on)));
    assert_eq!(
        without_simulator(&on),
        object(&off, "Deployment")[0]["spec"]["template"].clone()
    );
}

#[test]
fn on_the_operator_talks_to_a_hardened_seeded_sidecar_with_the_same_token() {
    let Some(py) = helm_python() else { return };
    let docs = render(&py, on());
    let pod = pod_spec(&docs);
    let sidecars = pod["initContainers"].as_array().expect("initContainers");
    assert_eq!(sidecars.len(), 1);
    let sim = &sidecars[0];
    let manager = &pod["containers"][0];
    // A native sidecar: started before the operator, stopped after it.
    assert_eq!(sim["restartPolicy"], "Always");
    assert_eq!(sim["image"], manager["image"], "the same binary");

    let sim_args = args(sim);
    assert_eq!(sim_args[0], "sim");
    assert_eq!(arg(&sim_args, "--listen"), Some("127.0.0.1:8081"));
    let op_args = args(manager);
    assert_eq!(
        arg(&op_args, "--konnect-url"),
        Some("http://127.0.0.1:8081")
    );
    assert_eq!(
        sim["ports"][0],
        json!({"name": "sim", "containerPort": 8081, "protocol": "TCP"})
    );

    // The seed file is the ConfigMap's key, mounted where --seed-file reads it.
    let seed_file = arg(&sim_args, "--seed-file").expect("--seed-file");
    let mount = &sim["volumeMounts"][0];
    assert_eq!(
        format!("{}/seed.yaml", mount["mountPath"].as_str().unwrap()),
        seed_file
    );
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("seed volume");
    let config_map = object(&docs, "ConfigMap")[0];
    assert_eq!(volume["configMap"]["name"], config_map["metadata"]["name"]);
    assert_eq!(
        volume["configMap"]["items"][0],
        json!({"key": "seed.yaml", "path": "seed.yaml"})
    );

    // One admin token: the sim's env and the operator's token file come from the same Secret key.
    let env = &sim["env"][0];
    assert_eq!(env["name"], "KONNECT_SIM_ADMIN_TOKEN");
    let token_volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "konnect-token")
        .unwrap();
    let secret = object(&docs, "Secret")[0];
    assert_eq!(
        env["valueFrom"]["secretKeyRef"]["name"],
        secret["metadata"]["name"]
    );
    assert_eq!(
        token_volume["secret"]["secretName"],
        secret["metadata"]["name"]
    );
    assert_eq!(env["valueFrom"]["secretKeyRef"]["key"], "token");
    assert_eq!(token_volume["secret"]["items"][0]["key"], "token");
    let token = admin_token(secret);
    assert!(
        token.starts_with("kpat_") && token.len() >= 40,
        "a kpat_-shaped random token"
    );
    assert!(!notes(&docs).contains(&token), "NOTES never show the token");
    assert_ne!(
        admin_token(object(&render(&py, on()), "Secret")[0]),
        token,
        "random per install"
    );

    // As hardened as the operator.
    for c in [sim, manager] {
        let sc = &c["securityContext"];
        assert_eq!(sc["runAsNonRoot"], true);
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
        assert!(c["resources"]["limits"]["memory"].is_string());
    }
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
}

#[test]
fn existing_secret_and_seed_config_map_are_used_as_they_are() {
    let Some(py) = helm_python() else { return };
    let docs = render(
        &py,
        json!({"simulator": {"enabled": true,
            "adminToken": {"existingSecret": "ci-sim-admin", "existingSecretKey": "kpat"},
            "seedConfigMap": "team-seed", "seedConfigMapKey": "org.yaml"}}),
    );
    assert!(object(&docs, "Secret").is_empty() && object(&docs, "ConfigMap").is_empty());
    let pod = pod_spec(&docs);
    let env = &pod["initContainers"][0]["env"][0]["valueFrom"]["secretKeyRef"];
    assert_eq!(env, &json!({"name": "ci-sim-admin", "key": "kpat"}));
    let volumes = pod["volumes"].as_array().unwrap();
    assert_eq!(volumes[0]["secret"]["secretName"], "ci-sim-admin");
    assert_eq!(volumes[0]["secret"]["items"][0]["key"], "kpat");
    assert_eq!(volumes[1]["configMap"]["name"], "team-seed");
    assert_eq!(
        volumes[1]["configMap"]["items"][0],
        json!({"key": "org.yaml", "path": "seed.yaml"})
    );
    let template = &object(&docs, "Deployment")[0]["spec"]["template"];
    assert!(
        template["metadata"].get("annotations").is_none(),
        "no checksum of a seed it does not render"
    );

    // The simulator's token is the operator's: a self-managed identity cannot go with it.
    let err = try_render(
        &py,
        &json!({"simulator": {"enabled": true}, "konnect": {"token": {"selfManaged": true}}}),
    )
    .unwrap_err();
    assert!(err.contains("selfManaged"), "{err}");
    // Each pod has its own simulated organisation: a standby would take over an empty one.
    let err = try_render(
        &py,
        &json!({"simulator": {"enabled": true}, "replicaCount": 2}),
    )
    .unwrap_err();
    assert!(err.contains("replicaCount 1"), "{err}");
    let err = try_render(
        &py,
        &json!({"simulator": {"enabled": true, "port": "8081"}}),
    )
    .unwrap_err();
    assert!(err.contains("port"), "{err}");
}

fn admin_token(secret: &Value) -> String {
    let b64 = secret["data"]["token"].as_str().unwrap();
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
    )
    .unwrap()
}

struct Sim(Child);

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `konnect-sa-operator sim` as the sidecar does, with the rendered seed file and admin token.
fn start_sim(seed_file: &std::path::Path, token: &str) -> (Sim, u16) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_konnect-sa-operator"))
        .args(["sim", &format!("--listen=127.0.0.1:{port}")])
        .arg(format!("--seed-file={}", seed_file.display()))
        .env("KONNECT_SIM_ADMIN_TOKEN", token)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sim");
    let sim = Sim(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "sim did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    (sim, port)
}

/// `curl -H "Authorization: Bearer $TOKEN" /_sim/state`, as the README's CI job does.
fn sim_state(port: u16, token: &str) -> StateDump {
    let out = Command::new("curl")
        .args(["-sSf", "--max-time", "10", "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .arg(format!("http://127.0.0.1:{port}/_sim/state"))
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_rendered_seed_and_token_start_the_simulator() {
    let Some(py) = helm_python() else { return };
    let docs = render(&py, on());
    let seed_text = object(&docs, "ConfigMap")[0]["data"]["seed.yaml"]
        .as_str()
        .unwrap()
        .to_string();
    // The default seed is docs/sim-seed.yaml, against which config/samples become Ready (tests/docs.rs).
    let rendered: Value = serde_yaml::from_str(&seed_text).unwrap();
    let docs_seed: Value =
        serde_yaml::from_str(&std::fs::read_to_string(root().join("docs/sim-seed.yaml")).unwrap())
            .unwrap();
    assert_eq!(rendered, docs_seed);
    let _: SeedData = serde_yaml::from_str(&seed_text).expect("the sim's seed format");

    let dir = tempfile::tempdir().unwrap();
    let seed_file = dir.path().join("seed.yaml");
    std::fs::write(&seed_file, &seed_text).unwrap();
    let token = admin_token(object(&docs, "Secret")[0]);
    let (_sim, port) = start_sim(&seed_file, &token);
    let state = sim_state(port, &token);
    assert_eq!(state.organization.name, "Acme (simulated)");
    let teams: BTreeSet<_> = state.teams.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        teams,
        BTreeSet::from(["Organization Admin", "Platform", "Gateway Operators"])
    );
    let legacy = state.account_by_name("legacy-ci").expect("seeded account");
    assert_eq!(legacy.roles.len(), 1);
    assert!(state.account_by_name("mesh-zone-eu-1").is_some());

    // The operator's token file holds the same value: Konnect (the sim) accepts it, any other is refused.
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "Authorization: Bearer kpat_other",
        ])
        .arg(format!("http://127.0.0.1:{port}/v3/organizations/me"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401");
}
