//! A throwaway certificate authority for the TLS tests, made with the
//! `openssl` CLI: a CA and a server certificate for 127.0.0.1 and
//! localhost signed by it (EC P-256, valid two days), in a folder of the
//! caller's. The product trusts the CA through its own `ca_file` settings.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The files of a test CA.
pub struct TestCa {
    /// The CA's certificate (PEM): what the client trusts.
    pub ca: PathBuf,
    /// The server's certificate (PEM), for 127.0.0.1 and localhost.
    pub cert: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
}

/// Makes a CA named `ca_name` and a server certificate signed by it in
/// `dir` (`ca.pem`, `server.pem`, `server.key` and their by-products).
pub fn test_ca(dir: &Path, ca_name: &str) -> TestCa {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| {
                panic!("the TLS tests need the openssl CLI (scripts/install-test-deps): {e}")
            });
        assert!(
            out.status.success(),
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    fs::write(
        dir.join("server.ext"),
        "basicConstraints = critical, CA:FALSE\n\
         keyUsage = critical, digitalSignature\n\
         extendedKeyUsage = serverAuth\n\
         subjectAltName = IP:127.0.0.1, DNS:localhost\n",
    )
    .expect("write server.ext");
    let subject = format!("/CN={ca_name}");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        &subject,
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&ca);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    run(&csr);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
    TestCa {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    }
}
