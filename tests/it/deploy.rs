//! The Kubernetes manifests in `deploy/kubernetes/` validate against a current Kubernetes
//! schema (`kubernetes-validate` from PyPI, strict: unknown fields fail) and are consistent
//! with each other and with the observer (ports, probes, capabilities, labels):
//! `deploy/validate.sh` does both; this runs it.

use std::process::Command;

use integration_tests::serial;

#[test]
fn the_manifests_validate_against_the_kubernetes_schema() {
    // Python validating schemas (installing them on a first run): not beside a timed test.
    let _serial = serial();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repository root");
    let out = Command::new("bash")
        .arg(repo.join("deploy/validate.sh"))
        .current_dir(repo)
        .output()
        .expect("run deploy/validate.sh");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("0 failed"), "{text}");
    for manifest in ["daemonset.yaml", "daemonset-privileged.yaml", "service.yaml", "rbac.yaml", "namespace.yaml"] {
        assert!(text.contains(&format!("{manifest} passed")), "{manifest} not validated: {text}");
    }
}
