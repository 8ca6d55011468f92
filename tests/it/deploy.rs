//! The Kubernetes manifests in `deploy/kubernetes/` keep the promises docs/operations.md makes
//! for them: every object is valid against the Kubernetes schemas (offline, `kubernetes-validate
//! --strict` from the test venv), and the operational shape holds — two replicas with stable
//! names feeding `audit.replica`, probes on `/readyz` and `/healthz`, non-root with a read-only
//! root file system, a PodDisruptionBudget that selects the pods, egress limited to DNS,
//! PostgreSQL, 443 and WinRM, and a configuration that `sessiongate config check` accepts.
//! Run: `cargo nextest run --test it deploy::`

use serde_json::Value;
use std::{collections::BTreeSet, path::PathBuf, process::Command};

const BIN: &str = env!("CARGO_BIN_EXE_sessiongate");

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

/// Every document of every manifest file, as JSON values, with the file it came from.
fn documents() -> Vec<(String, Value)> {
    let kustomization: Value = serde_norway::from_str(
        &std::fs::read_to_string(dir().join("kustomization.yaml")).expect("kustomization.yaml"),
    )
    .expect("kustomization.yaml parses");
    let mut out = Vec::new();
    for f in kustomization["resources"].as_array().expect("resources") {
        let f = f.as_str().expect("resource file name");
        let text = std::fs::read_to_string(dir().join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        for doc in serde_norway::Deserializer::from_str(&text) {
            let v: Value =
                serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{f}: {e}"));
            if !v.is_null() {
                out.push((f.to_string(), v));
            }
        }
    }
    out
}

fn one<'a>(docs: &'a [(String, Value)], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs
        .iter()
        .map(|(_, v)| v)
        .filter(|v| v["kind"] == kind)
        .collect();
    assert_eq!(found.len(), 1, "exactly one {kind}");
    found[0]
}

#[test]
fn manifests_are_valid_against_the_kubernetes_schemas() {
    let validator = crate::support::python::tool("kubernetes-validate");
    let files: Vec<PathBuf> = std::fs::read_dir(dir())
        .expect("deploy/kubernetes")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "yaml")
                && p.file_name().is_some_and(|n| n != "kustomization.yaml")
        })
        .collect();
    assert!(files.len() >= 8, "manifests: {files:?}");
    let out = Command::new(&validator)
        .args(["--strict", "--quiet", "--kubernetes-version", "1.33"])
        .args(&files)
        .output()
        .expect("run kubernetes-validate");
    assert!(
        out.status.success(),
        "kubernetes-validate refused the manifests:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn manifests_keep_the_operational_shape() {
    let docs = documents();
    let sts = one(&docs, "StatefulSet");
    let spec = &sts["spec"];
    assert!(
        spec["replicas"].as_u64().unwrap_or(0) >= 2,
        "two replicas at least"
    );
    let labels = &spec["template"]["metadata"]["labels"];
    assert_eq!(&spec["selector"]["matchLabels"], labels);
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let c = &pod["containers"][0];
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
    assert!(c["resources"]["requests"]["cpu"].is_string());
    assert!(c["resources"]["requests"]["memory"].is_string());
    assert!(c["resources"]["limits"]["memory"].is_string());
    // Each replica writes its own chain: the replica id is the pod's stable name.
    let env = c["env"].as_array().expect("env");
    let replica = env
        .iter()
        .find(|e| e["name"] == "SESSIONGATE__AUDIT__REPLICA")
        .expect("SESSIONGATE__AUDIT__REPLICA");
    assert_eq!(
        replica["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    let url = env
        .iter()
        .find(|e| e["name"] == "SESSIONGATE__AUDIT__URL")
        .expect("SESSIONGATE__AUDIT__URL");
    assert!(
        url["valueFrom"]["secretKeyRef"].is_object(),
        "the database URL comes from a Secret"
    );
    // Every writable path is a volume (the root file system is read-only).
    let mounts: BTreeSet<&str> = c["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .filter(|m| m["readOnly"] != true)
        .filter_map(|m| m["mountPath"].as_str())
        .collect();
    assert!(
        mounts.contains("/var/lib/sessiongate") && mounts.contains("/tmp"),
        "{mounts:?}"
    );

    // The configuration the pods run: config check accepts it (secrets given as the Secret would).
    let cm = one(&docs, "ConfigMap");
    let toml_text = cm["data"]["sessiongate.toml"]
        .as_str()
        .expect("sessiongate.toml");
    let cfg: toml::Value = toml::from_str(toml_text).expect("ConfigMap TOML parses");
    let grace = cfg["server"]["shutdown_grace_secs"]
        .as_integer()
        .expect("shutdown_grace_secs");
    let termination = pod["terminationGracePeriodSeconds"]
        .as_i64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        termination > grace,
        "pods must outlive the shutdown grace ({termination} <= {grace})"
    );
    assert_eq!(
        cfg["server"]["data_dir"].as_str(),
        Some("/var/lib/sessiongate"),
        "data_dir is the writable volume"
    );
    let work = tempfile::tempdir().expect("tempdir");
    let file = work.path().join("sessiongate.toml");
    let password = work.path().join("winrm-password");
    std::fs::write(&password, "not-a-real-password").expect("write password");
    let toml_here = toml_text.replace(
        "/run/secrets/sessiongate/winrm-password",
        password.to_str().expect("utf-8 path"),
    );
    std::fs::write(&file, toml_here).expect("write config");
    let out = Command::new(BIN)
        .args(["config", "check"])
        .arg(&file)
        .env(
            "SESSIONGATE__AUDIT__URL",
            "postgres://sessiongate@127.0.0.1:5432/sessiongate",
        )
        .env("SESSIONGATE__AUDIT__REPLICA", "sessiongate-0")
        .env("SESSIONGATE_AVD_SECRET", "not-a-real-secret")
        .output()
        .expect("run config check");
    assert!(
        out.status.success(),
        "config check refused the ConfigMap's configuration:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The disruption budget selects exactly the pods.
    let pdb = one(&docs, "PodDisruptionBudget");
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], labels);
    assert!(pdb["spec"]["minAvailable"].as_u64().unwrap_or(0) >= 1);

    // Egress only to DNS, PostgreSQL, HTTPS (ARM, Entra) and WinRM.
    let np = one(&docs, "NetworkPolicy");
    assert_eq!(&np["spec"]["podSelector"]["matchLabels"], labels);
    let types: BTreeSet<&str> = np["spec"]["policyTypes"]
        .as_array()
        .expect("policyTypes")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(types, BTreeSet::from(["Egress", "Ingress"]));
    let mut ports = BTreeSet::new();
    for rule in np["spec"]["egress"].as_array().expect("egress rules") {
        let rule_ports = rule["ports"]
            .as_array()
            .expect("every egress rule names its ports");
        for p in rule_ports {
            ports.insert(p["port"].as_u64().expect("numeric port"));
        }
    }
    assert_eq!(ports, BTreeSet::from([53, 443, 5432, 5986]));
}
