//! A throwaway PKI for the TLS tests, made with `openssl` (Debian's; `cargo xtask setup`
//! installs it): a CA, a server certificate for 127.0.0.1 and a client certificate, EC P-256,
//! valid two days, in a scratch directory that goes with the test.

use std::path::PathBuf;
use std::process::Command;

use crate::Scratch;

/// The files of one PKI.
pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    _scratch: Scratch,
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl").args(args).output().expect("run openssl (cargo xtask setup installs it)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Pki {
    /// A new CA and the certificates it signs.
    pub fn generate(tag: &str) -> Pki {
        let scratch = Scratch::new(tag);
        let p = |name: &str| scratch.path().join(name);
        let s = |name: &str| p(name).to_str().expect("utf-8 path").to_owned();
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        let (ca_key, ca_crt) = (s("ca.key"), s("ca.crt"));
        // Named after the tag: two PKIs of one test are two CAs, as a wrong CA is in life.
        let ca_subject = format!("/CN=eventflux-probe test CA {tag}");
        ca.extend(["-keyout", &ca_key, "-out", &ca_crt, "-days", "2", "-subj", &ca_subject]);
        openssl(&ca);
        for (who, usage) in [("server", "serverAuth"), ("client", "clientAuth")] {
            let (key, csr, crt, ext) = (
                s(&format!("{who}.key")),
                s(&format!("{who}.csr")),
                s(&format!("{who}.crt")),
                s(&format!("{who}.ext")),
            );
            std::fs::write(
                &ext,
                format!(
                    "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage={usage}\n"
                ),
            )
            .expect("extensions file");
            let mut req = vec!["req"];
            req.extend(ec);
            let subject = format!("/CN={who}");
            req.extend(["-keyout", &key, "-out", &csr, "-subj", &subject]);
            openssl(&req);
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_crt,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "2",
                "-extfile",
                &ext,
            ]);
        }
        Pki {
            ca: p("ca.crt"),
            server_cert: p("server.crt"),
            server_key: p("server.key"),
            client_cert: p("client.crt"),
            client_key: p("client.key"),
            _scratch: scratch,
        }
    }

    /// `OTEL_EXPORTER_OTLP_*` variables that make a client trust this CA and present its
    /// client certificate.
    pub fn client_env(&self) -> Vec<(&'static str, String)> {
        let s = |p: &PathBuf| p.to_str().expect("utf-8 path").to_owned();
        vec![
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", s(&self.ca)),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", s(&self.client_cert)),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", s(&self.client_key)),
        ]
    }
}
