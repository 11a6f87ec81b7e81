//! Signatures from both signers, verified by mail-auth against keys served
//! by the loopback DNS server, plus the edge cases the daemon must classify.

use data_encoding::BASE64;
use mail_auth::common::crypto::CryptoError;
use mail_auth::dkim::DkimError;
use mail_auth::hickory_resolver::proto::op::ResponseCode;
use mail_auth::{AuthenticatedMessage, DkimResult, DnsError, Error, MessageAuthenticator};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use testkit::dkim::{self, KeyKind, SignOptions, TestKey};
use testkit::dns::{DnsServer, Zone, resolver_config};
use testkit::mail;

const DOMAIN: &str = "example.org";

fn sample_message() -> Vec<u8> {
    mail::message(
        "Court Clerk <clerk@example.org>",
        "legal@example.net",
        "Production order 2024-117",
        "Dear provider,\n\nPlease find the order attached.   \n\nRegards\n\n\n",
    )
}

fn opts(selector: &str) -> SignOptions {
    SignOptions::new(DOMAIN, selector)
}

/// A DNS server publishing each (selector, key) pair, and an authenticator
/// using it.
fn publish(keys: &[(&str, &TestKey)]) -> (DnsServer, MessageAuthenticator) {
    let mut zone = Zone::new();
    for (selector, key) in keys {
        zone.txt(&opts(selector).key_record_name(), &key.dns_txt);
    }
    let server = DnsServer::start(zone).unwrap();
    let (config, opts) = resolver_config(server.addr());
    let auth = MessageAuthenticator::new(config, opts).unwrap();
    (server, auth)
}

/// DKIM results with mail-auth's default (strict) parsing.
async fn verify(auth: &MessageAuthenticator, message: &[u8]) -> Vec<DkimResult> {
    let parsed = AuthenticatedMessage::parse(message).expect("parse message");
    results(auth, &parsed).await
}

async fn results(
    auth: &MessageAuthenticator,
    parsed: &AuthenticatedMessage<'_>,
) -> Vec<DkimResult> {
    auth.verify_dkim(parsed)
        .await
        .iter()
        .map(|output| output.result().clone())
        .collect()
}

fn header_of(signed: &[u8]) -> String {
    let text = String::from_utf8_lossy(signed);
    let end = text.find("\r\nFrom:").expect("signature precedes From");
    text[..end].replace("\r\n\t", " ")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn generated_keys_are_real_pkcs8_and_publish_the_right_public_key() {
    for kind in [KeyKind::Rsa(1024), KeyKind::Ed25519] {
        let key = dkim::generate(kind);
        assert!(key.private_pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        // openssl derives the public key from the PEM independently.
        let mut child = Command::new("openssl")
            .args(["pkey", "-pubout", "-outform", "DER"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(key.private_pem.as_bytes())
            .unwrap();
        let spki = child.wait_with_output().unwrap().stdout;
        let published = BASE64.decode(key.public_key_base64().as_bytes()).unwrap();
        match kind {
            KeyKind::Rsa(_) => {
                assert!(key.dns_txt.starts_with("v=DKIM1; k=rsa; p="));
                assert_eq!(published, spki, "p= is the SubjectPublicKeyInfo");
            }
            KeyKind::Ed25519 => {
                assert!(key.dns_txt.starts_with("v=DKIM1; k=ed25519; p="));
                assert_eq!(published.len(), 32);
                assert_eq!(published, spki[spki.len() - 32..], "p= is the raw key");
            }
        }
    }
    // Fresh keys every time.
    assert_ne!(
        dkim::generate(KeyKind::Ed25519),
        dkim::generate(KeyKind::Ed25519)
    );
}

#[tokio::test]
async fn both_signers_verify_for_every_algorithm_and_size() {
    let ed = dkim::generate(KeyKind::Ed25519);
    let rsa2048 = dkim::generate(KeyKind::Rsa(2048));
    let rsa1024 = dkim::generate(KeyKind::Rsa(1024));
    let (_server, auth) = publish(&[("ed", &ed), ("rsa2048", &rsa2048), ("rsa1024", &rsa1024)]);
    let message = sample_message();

    type Signer = fn(&[u8], &TestKey, &SignOptions) -> Vec<u8>;
    let cases: [(&str, &TestKey, bool, Signer, &str); 7] = [
        ("ed", &ed, false, dkim::sign, "a=ed25519-sha256"),
        ("rsa2048", &rsa2048, false, dkim::sign, "a=rsa-sha256"),
        ("rsa2048", &rsa2048, true, dkim::sign, "a=rsa-sha1"),
        ("rsa1024", &rsa1024, false, dkim::sign, "a=rsa-sha256"),
        ("rsa1024", &rsa1024, true, dkim::sign, "a=rsa-sha1"),
        ("ed", &ed, false, dkim::sign_builtin, "a=ed25519-sha256"),
        (
            "rsa2048",
            &rsa2048,
            false,
            dkim::sign_builtin,
            "a=rsa-sha256",
        ),
    ];
    for (selector, key, sha1, signer, algorithm) in cases {
        let options = SignOptions {
            sha1,
            ..opts(selector)
        };
        let signed = signer(&message, key, &options);
        let header = header_of(&signed);
        assert!(header.contains(algorithm), "{header}");
        assert!(header.contains(&format!("s={selector};")), "{header}");
        // Relays add trace headers above the signature; that must not matter.
        let relayed = mail::with_header(
            &signed,
            "Received",
            "from mx.example.org ([192.0.2.25]) by intake.example.net",
        );
        assert_eq!(
            verify(&auth, &relayed).await,
            [DkimResult::Pass],
            "{selector} sha1={sha1}: {header}"
        );
    }
}

#[tokio::test]
async fn a_512_bit_rsa_key_signs_but_mail_auth_rejects_it() {
    let weak = dkim::generate(KeyKind::Rsa(512));
    let (_server, auth) = publish(&[("weak", &weak)]);
    let signed = dkim::sign(&sample_message(), &weak, &opts("weak"));
    // aws-lc-rs verifies RSA only from 1024 bits up
    // (RSA_PKCS1_1024_8192_*), so mail-auth reports a plain verification
    // failure, not a distinct "key too small" error.
    assert_eq!(
        verify(&auth, &signed).await,
        [DkimResult::Fail(Error::Crypto(
            CryptoError::FailedVerification
        ))]
    );
}

#[tokio::test]
async fn expiration_in_the_future_passes_and_in_the_past_is_neutral() {
    let ed = dkim::generate(KeyKind::Ed25519);
    let rsa = dkim::generate(KeyKind::Rsa(1024));
    let (_server, auth) = publish(&[("ed", &ed), ("rsa", &rsa)]);
    let message = sample_message();

    for (selector, key) in [("ed", &ed), ("rsa", &rsa)] {
        let future = now() + 3600;
        let options = SignOptions {
            expiration: Some(future),
            ..opts(selector)
        };
        let signed = dkim::sign(&message, key, &options);
        assert!(header_of(&signed).contains(&format!("x={future}")));
        assert_eq!(verify(&auth, &signed).await, [DkimResult::Pass]);

        let options = SignOptions {
            expiration: Some(now() - 60),
            ..opts(selector)
        };
        let signed = dkim::sign(&message, key, &options);
        assert_eq!(
            verify(&auth, &signed).await,
            [DkimResult::Neutral(Error::Dkim(
                DkimError::SignatureExpired
            ))]
        );
    }
}

/// Appends a mailing-list style footer after signing.
fn append_footer(signed: &[u8]) -> Vec<u8> {
    let mut extended = signed.to_vec();
    extended.extend_from_slice(b"--\r\nClick here to claim your prize\r\n");
    extended
}

#[tokio::test]
async fn body_length_is_refused_by_strict_parsing() {
    let ed = dkim::generate(KeyKind::Ed25519);
    let rsa = dkim::generate(KeyKind::Rsa(1024));
    let (server, auth) = publish(&[("ed", &ed), ("rsa", &rsa)]);

    for (selector, key) in [("ed", &ed), ("rsa", &rsa)] {
        let options = SignOptions {
            body_length: true,
            ..opts(selector)
        };
        let signed = dkim::sign(&sample_message(), key, &options);
        // AuthenticatedMessage::parse is strict: a signature with l= becomes
        // a parse error, reported as Neutral before any DNS lookup, whether
        // or not the body was extended.
        for msg in [signed.clone(), append_footer(&signed)] {
            assert_eq!(
                verify(&auth, &msg).await,
                [DkimResult::Neutral(Error::Dkim(DkimError::SignatureLength))]
            );
        }
    }
    assert_eq!(server.queries(), 0);
}

#[tokio::test]
async fn body_length_in_lax_mode_and_mail_auths_raw_byte_count() {
    let ed = dkim::generate(KeyKind::Ed25519);
    let rsa = dkim::generate(KeyKind::Rsa(1024));
    let (_server, auth) = publish(&[("ed", &ed), ("rsa", &rsa)]);
    let lax = |msg: Vec<u8>| {
        let auth = &auth;
        async move {
            let parsed = AuthenticatedMessage::parse_with_opts(&msg, None, false).unwrap();
            results(auth, &parsed).await
        }
    };

    // The sample body has trailing blanks and trailing empty lines, so its
    // raw and relaxed-canonical lengths differ: 69 and 62 bytes.
    let message = sample_message();
    let raw_len = 69;
    let canonical_len =
        "Dear provider,\r\n\r\nPlease find the order attached.\r\n\r\nRegards\r\n".len();

    // mail-auth (signer and verifier alike) counts l= in raw body bytes,
    // where RFC 6376 §3.5 says canonicalized bytes. Its own signatures are
    // consistent with its verifier: they pass in lax mode, footer or not.
    let options = SignOptions {
        body_length: true,
        ..opts("ed")
    };
    let signed = dkim::sign(&message, &ed, &options);
    assert!(header_of(&signed).contains(&format!("l={raw_len};")));
    assert_eq!(lax(signed.clone()).await, [DkimResult::Pass]);
    assert_eq!(lax(append_footer(&signed)).await, [DkimResult::Pass]);

    // The built-in signer follows the RFC (l = canonical length). mail-auth
    // then hashes the first 62 *raw* bytes, which canonicalize differently,
    // so even the unmodified message fails the body hash.
    let options = SignOptions {
        body_length: true,
        ..opts("rsa")
    };
    let signed = dkim::sign(&message, &rsa, &options);
    assert!(header_of(&signed).contains(&format!("l={canonical_len};")));
    assert_eq!(
        lax(signed).await,
        [DkimResult::Neutral(Error::Dkim(
            DkimError::FailedBodyHashMatch
        ))]
    );

    // With an already canonical body both counts agree, and an RFC-style l=
    // signature lets the appended footer through.
    let clean = mail::message(
        "a@example.org",
        "b@example.net",
        "Clean",
        "Line one\nLine two\n",
    );
    let signed = dkim::sign(&clean, &rsa, &options);
    assert_eq!(lax(signed.clone()).await, [DkimResult::Pass]);
    assert_eq!(lax(append_footer(&signed)).await, [DkimResult::Pass]);
    // ...whereas without l= the footer is caught.
    let signed = dkim::sign(&clean, &rsa, &opts("rsa"));
    assert_eq!(
        lax(append_footer(&signed)).await,
        [DkimResult::Neutral(Error::Dkim(
            DkimError::FailedBodyHashMatch
        ))]
    );
}

#[tokio::test]
async fn tampering_fails_differently_per_algorithm() {
    let ed = dkim::generate(KeyKind::Ed25519);
    let rsa = dkim::generate(KeyKind::Rsa(2048));
    let (_server, auth) = publish(&[("ed", &ed), ("rsa", &rsa)]);
    let message = sample_message();

    for (selector, key) in [("ed", &ed), ("rsa", &rsa)] {
        let signed = dkim::sign(&message, key, &opts(selector));
        let text = String::from_utf8(signed).unwrap();

        let body_changed = text.replace("attached", "enclosed");
        assert_eq!(
            verify(&auth, body_changed.as_bytes()).await,
            [DkimResult::Neutral(Error::Dkim(
                DkimError::FailedBodyHashMatch
            ))]
        );

        let header_changed = text.replace("order 2024-117", "order 2024-118");
        let result = verify(&auth, header_changed.as_bytes()).await;
        match selector {
            // RSA: a clean FailedVerification.
            "rsa" => assert_eq!(
                result,
                [DkimResult::Fail(Error::Crypto(
                    CryptoError::FailedVerification
                ))]
            ),
            // Ed25519: mail-auth wraps the aws-lc-rs error as Library(..).
            _ => assert!(
                matches!(
                    &result[..],
                    [DkimResult::Fail(Error::Crypto(CryptoError::Library(_)))]
                ),
                "{result:?}"
            ),
        }
    }
}

#[tokio::test]
async fn builtin_signer_over_signs_absent_headers() {
    let ed = dkim::generate(KeyKind::Ed25519);
    let (_server, auth) = publish(&[("ed", &ed)]);
    let mut options = opts("ed");
    options.headers.push("Reply-To".to_owned());
    let signed = dkim::sign_builtin(&sample_message(), &ed, &options);
    assert!(header_of(&signed).contains("h=From:To:Subject:Date:Message-ID:Reply-To;"));
    assert_eq!(verify(&auth, &signed).await, [DkimResult::Pass]);

    // Adding the absent header afterwards breaks the signature. (It must go
    // below the DKIM-Signature: verifiers pick signed headers bottom-up.)
    let text = String::from_utf8(signed).unwrap();
    let added = text.replacen(
        "\r\nFrom: ",
        "\r\nReply-To: attacker@example.com\r\nFrom: ",
        1,
    );
    let result = verify(&auth, added.as_bytes()).await;
    assert!(
        matches!(&result[..], [DkimResult::Fail(Error::Crypto(_))]),
        "{result:?}"
    );
}

#[tokio::test]
async fn key_record_dns_trouble_maps_to_perm_and_temp_errors() {
    let ed = dkim::generate(KeyKind::Ed25519);
    let mut zone = Zone::new();
    zone.a(
        "nodata._domainkey.example.org",
        "192.0.2.1".parse().unwrap(),
    )
    .servfail("servfail._domainkey.example.org")
    .timeout("timeout._domainkey.example.org")
    .txt("revoked._domainkey.example.org", "v=DKIM1; k=ed25519; p=")
    .txt(
        "garbage._domainkey.example.org",
        "v=DKIM1; k=ed25519; p=!!!",
    );
    let server = DnsServer::start(zone).unwrap();
    let (config, mut resolver_opts) = resolver_config(server.addr());
    resolver_opts.timeout = Duration::from_millis(500);
    let auth = MessageAuthenticator::new(config, resolver_opts).unwrap();
    let message = sample_message();

    let result = |selector: &'static str| {
        let signed = dkim::sign(&message, &ed, &opts(selector));
        let auth = &auth;
        async move { verify(auth, &signed).await }
    };
    assert_eq!(
        result("missing").await,
        [DkimResult::PermError(Error::Dns(DnsError::RecordNotFound(
            ResponseCode::NXDomain
        )))]
    );
    assert_eq!(
        result("nodata").await,
        [DkimResult::PermError(Error::Dns(DnsError::RecordNotFound(
            ResponseCode::NoError
        )))]
    );
    assert!(
        matches!(
            &result("servfail").await[..],
            [DkimResult::TempError(Error::Dns(DnsError::Resolver(msg)))]
                if msg == "DNS error: error response: Server Failure"
        ),
        "SERVFAIL"
    );
    assert_eq!(
        result("timeout").await,
        [DkimResult::TempError(Error::Dns(DnsError::Resolver(
            "request timed out".to_owned()
        )))]
    );
    assert_eq!(
        result("revoked").await,
        [DkimResult::PermError(Error::Dkim(
            DkimError::RevokedPublicKey
        ))]
    );
    // A key record that does not parse is reported as a DNS-level
    // InvalidRecordType, permanent like NXDOMAIN.
    assert_eq!(
        result("garbage").await,
        [DkimResult::PermError(Error::Dns(
            DnsError::InvalidRecordType
        ))]
    );
}

#[tokio::test]
async fn malformed_signature_headers_are_neutral_or_invisible() {
    let ed = dkim::generate(KeyKind::Ed25519);
    let (server, auth) = publish(&[("ed", &ed)]);
    let signed = String::from_utf8(dkim::sign(&sample_message(), &ed, &opts("ed"))).unwrap();

    // Parse errors of the DkimError kind come back as Neutral...
    let unsupported_version = signed.replacen("v=1;", "v=2;", 1);
    assert_eq!(
        verify(&auth, unsupported_version.as_bytes()).await,
        [DkimResult::Neutral(Error::Dkim(
            DkimError::UnsupportedVersion
        ))]
    );
    let unknown_algorithm = signed.replacen("a=ed25519-sha256", "a=ed448-sha256", 1);
    assert_eq!(
        verify(&auth, unknown_algorithm.as_bytes()).await,
        [DkimResult::Neutral(Error::Dkim(
            DkimError::UnsupportedAlgorithm
        ))]
    );
    // ...but other parse errors (MissingParameters, Base64) are dropped:
    // verify_dkim returns no output at all, as for an unsigned message.
    let missing_b = signed.replacen(" b=", " x-b=", 1);
    assert_eq!(verify(&auth, missing_b.as_bytes()).await, []);
    let bad_base64 = signed.replacen(" bh=", " bh=!!!", 1);
    assert_eq!(verify(&auth, bad_base64.as_bytes()).await, []);
    assert_eq!(server.queries(), 0);
}
