//! DKIM test keys and signatures.
//!
//! Keys are generated afresh for every run ([`generate`]), so no private key
//! is ever committed. [`sign`] prepends a `DKIM-Signature` header made by
//! mail-auth's own signer where that signer can do the job, and by this
//! module's small RFC 6376 implementation ([`sign_builtin`]) where it cannot:
//! aws-lc-rs refuses RSA keys under 2048 bits and has no rsa-sha1 signing,
//! and mail-auth cannot produce an already expired signature. Those legacy
//! cases are exactly what the daemon has to classify, so the tests need them.
//!
//! ```
//! use testkit::dkim::{self, KeyKind, SignOptions};
//!
//! let key = dkim::generate(KeyKind::Ed25519);
//! let opts = SignOptions::new("example.org", "sel2024");
//! let mut zone = testkit::dns::Zone::new();
//! zone.txt(&opts.key_record_name(), &key.dns_txt);
//! let msg = testkit::mail::message("a@example.org", "b@example.net", "Hi", "Hello\n");
//! let signed = dkim::sign(&msg, &key, &opts);
//! assert!(signed.starts_with(b"DKIM-Signature: "));
//! ```

use data_encoding::BASE64;
use mail_auth::common::crypto::{Ed25519Key, HashAlgorithm, RsaKey, Sha256, SigningKey};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{DkimSigner, Signature};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

/// The kind and size of a DKIM key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// RSA with this many modulus bits (512 and 1024 work too, for tests of
    /// weak keys).
    Rsa(u32),
    /// Ed25519 (RFC 8463).
    Ed25519,
}

/// A freshly generated DKIM key pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestKey {
    /// What kind of key this is.
    pub kind: KeyKind,
    /// The private key as PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub private_pem: String,
    /// The key record to publish at `selector._domainkey.domain`:
    /// `v=DKIM1; k=rsa; p=...` with the SubjectPublicKeyInfo DER, or
    /// `v=DKIM1; k=ed25519; p=...` with the raw 32-byte public key.
    pub dns_txt: String,
}

impl TestKey {
    /// The base64 public key, i.e. the `p=` value of [`TestKey::dns_txt`].
    pub fn public_key_base64(&self) -> &str {
        self.dns_txt
            .rsplit_once("p=")
            .map_or("", |(_, key)| key.trim())
    }
}

/// Generates a new key pair with `openssl genpkey`.
///
/// openssl rather than aws-lc-rs: aws-lc-rs will not generate (or even load)
/// RSA keys under 2048 bits, and its Ed25519 PKCS#8 v2 output is unreadable
/// for OpenSSL 3.0, whereas openssl's PKCS#8 v1 PEM loads everywhere,
/// mail-auth included.
///
/// # Panics
///
/// If the `openssl` command is missing or fails (for example for an RSA size
/// it refuses).
pub fn generate(kind: KeyKind) -> TestKey {
    let (algorithm, options) = match kind {
        KeyKind::Rsa(bits) => ("RSA", vec![format!("rsa_keygen_bits:{bits}")]),
        KeyKind::Ed25519 => ("ED25519", Vec::new()),
    };
    let mut args = vec!["genpkey", "-algorithm", algorithm];
    for option in &options {
        args.extend(["-pkeyopt", option]);
    }
    let pem = openssl(&args, &[]);
    let spki = openssl(&["pkey", "-pubout", "-outform", "DER"], &pem);
    let dns_txt = match kind {
        // RFC 6376 §3.6.1: k=rsa publishes the SubjectPublicKeyInfo.
        KeyKind::Rsa(_) => format!("v=DKIM1; k=rsa; p={}", BASE64.encode(&spki)),
        // RFC 8463 §4.2: k=ed25519 publishes the bare 32-byte key.
        KeyKind::Ed25519 => {
            let raw = spki
                .strip_prefix(&ED25519_SPKI_PREFIX)
                .filter(|key| key.len() == 32)
                .unwrap_or_else(|| panic!("unexpected Ed25519 SubjectPublicKeyInfo {spki:02x?}"));
            format!("v=DKIM1; k=ed25519; p={}", BASE64.encode(raw))
        }
    };
    TestKey {
        kind,
        private_pem: String::from_utf8(pem).expect("openssl writes ASCII PEM"),
        dns_txt,
    }
}

/// DER of an Ed25519 SubjectPublicKeyInfo up to the key bits (RFC 8410 §4):
/// SEQUENCE { SEQUENCE { OID 1.3.101.112 } BIT STRING (33 bytes, 0 unused) }.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// What to sign and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignOptions {
    /// The signing domain (`d=`).
    pub domain: String,
    /// The selector (`s=`).
    pub selector: String,
    /// The header fields to sign (`h=`), in order. Default: From, To,
    /// Subject, Date, Message-ID.
    pub headers: Vec<String>,
    /// Absolute expiry (`x=`) as Unix time; may lie in the past to make an
    /// expired signature.
    pub expiration: Option<u64>,
    /// Whether to add the body length tag (`l=`), which lets anyone append
    /// to the body without breaking the signature.
    ///
    /// Beware: mail-auth's signer and verifier count `l=` in *raw* body
    /// bytes, while RFC 6376 §3.5 (and [`sign_builtin`]) count canonicalized
    /// bytes. The two agree only for bodies that are already canonical (no
    /// trailing blanks, no trailing empty lines, CRLF endings).
    pub body_length: bool,
    /// Sign with rsa-sha1 instead of rsa-sha256 (RSA keys only).
    pub sha1: bool,
}

impl SignOptions {
    /// Options for `d=domain; s=selector` with the default header list, no
    /// expiry, no `l=`, SHA-256.
    pub fn new(domain: &str, selector: &str) -> Self {
        SignOptions {
            domain: domain.to_owned(),
            selector: selector.to_owned(),
            headers: ["From", "To", "Subject", "Date", "Message-ID"]
                .map(String::from)
                .to_vec(),
            expiration: None,
            body_length: false,
            sha1: false,
        }
    }

    /// Where the public key must be published: `selector._domainkey.domain`.
    pub fn key_record_name(&self) -> String {
        format!("{}._domainkey.{}", self.selector, self.domain)
    }
}

/// Returns `message` with a `DKIM-Signature` header (relaxed/relaxed, `t=`
/// now) prepended.
///
/// mail-auth's signer makes the signature for Ed25519 and for RSA of 2048
/// bits or more with SHA-256, unless `expiration` is not in the future;
/// everything else goes to [`sign_builtin`]. Both verify alike with
/// mail-auth. They differ in header layout, in `h=` order (mail-auth lists
/// the headers it found bottom-up, then appends the absent ones) and in how
/// `l=` is counted (see [`SignOptions::body_length`]).
///
/// # Panics
///
/// If signing fails: a key that does not match its kind, a missing `openssl`
/// command, `sha1` with an Ed25519 key, or no header of the message in `h=`
/// (for mail-auth's signer).
pub fn sign(message: &[u8], key: &TestKey, opts: &SignOptions) -> Vec<u8> {
    let library_can_sign = !opts.sha1
        && match key.kind {
            KeyKind::Ed25519 => true,
            KeyKind::Rsa(bits) => bits >= 2048,
        };
    if library_can_sign {
        // mail-auth takes a relative expiry and adds its own clock reading;
        // should the second change in between, x= would be off by one, so
        // check and try again.
        for _ in 0..3 {
            let now = unix_now();
            let delta = match opts.expiration {
                None => 0,
                Some(x) if x > now => x - now,
                // Expired already: mail-auth cannot express that.
                Some(_) => break,
            };
            let signature = library_signature(message, key, opts, delta);
            if opts.expiration.is_none_or(|x| x == signature.x) {
                return prepend(signature.to_header().as_bytes(), message);
            }
        }
    }
    sign_builtin(message, key, opts)
}

/// Signs with this module's own implementation of RFC 6376 (and RFC 8463
/// for Ed25519): relaxed/relaxed canonicalization, `t=` now, RSA signatures
/// made by `openssl dgst -sign`, so any RSA size and rsa-sha1 work.
///
/// Header fields named in `h=` are taken bottom-up as RFC 6376 §5.4.2
/// prescribes; a name without (remaining) instance is kept in `h=` and signs
/// the null string, which is how over-signing protects against added
/// headers.
///
/// # Panics
///
/// If the key cannot be used (see [`sign`]), or `sha1` is requested with an
/// Ed25519 key (RFC 8463 defines only ed25519-sha256).
pub fn sign_builtin(message: &[u8], key: &TestKey, opts: &SignOptions) -> Vec<u8> {
    let (algorithm, hash) = match (key.kind, opts.sha1) {
        (KeyKind::Rsa(_), false) => ("rsa-sha256", HashAlgorithm::Sha256),
        (KeyKind::Rsa(_), true) => ("rsa-sha1", HashAlgorithm::Sha1),
        (KeyKind::Ed25519, false) => ("ed25519-sha256", HashAlgorithm::Sha256),
        (KeyKind::Ed25519, true) => panic!("ed25519 signatures are always sha256 (RFC 8463)"),
    };

    let (header_block, body) = split_message(message);
    let headers = parse_headers(header_block);
    let body = relaxed_body(body);

    let mut tags = vec![
        "v=1".to_owned(),
        format!("a={algorithm}"),
        "c=relaxed/relaxed".to_owned(),
        format!("d={}", opts.domain),
        format!("s={}", opts.selector),
        format!("t={}", unix_now()),
    ];
    if let Some(x) = opts.expiration {
        tags.push(format!("x={x}"));
    }
    if opts.body_length {
        tags.push(format!("l={}", body.len()));
    }
    tags.push(format!("h={}", opts.headers.join(":")));
    tags.push(format!(
        "bh={}",
        BASE64.encode(hash.hash(body.as_slice()).as_ref())
    ));

    // RFC 6376 §3.7: the signed headers in h= order, then the signature
    // header itself with an empty b= and without its trailing CRLF.
    let mut signed = Vec::new();
    let mut used = vec![false; headers.len()];
    for name in &opts.headers {
        let found = headers
            .iter()
            .enumerate()
            .rev()
            .find(|(i, (field, _))| !used[*i] && field.eq_ignore_ascii_case(name.as_bytes()));
        if let Some((i, (field, value))) = found {
            used[i] = true;
            relaxed_header(field, value, &mut signed);
        }
    }
    let unsigned_value = format!("{}; b=", tags.join("; "));
    relaxed_header(b"DKIM-Signature", unsigned_value.as_bytes(), &mut signed);
    signed.truncate(signed.len() - 2);

    let signature = match key.kind {
        KeyKind::Rsa(_) => rsa_sign(&key.private_pem, opts.sha1, &signed),
        KeyKind::Ed25519 => {
            let der = PrivatePkcs8KeyDer::from_pem_slice(key.private_pem.as_bytes())
                .expect("Ed25519 key is PKCS#8 PEM");
            Ed25519Key::from_pkcs8_maybe_unchecked_der(der.secret_pkcs8_der())
                .expect("load the Ed25519 key")
                .sign(signed.as_slice())
                .expect("Ed25519 signing")
        }
    };
    tags.push(format!("b={}", BASE64.encode(&signature)));

    prepend(fold_header("DKIM-Signature", &tags).as_bytes(), message)
}

/// Signs with mail-auth's `DkimSigner`; `expiration` is relative to now, 0
/// for none.
fn library_signature(message: &[u8], key: &TestKey, opts: &SignOptions, delta: u64) -> Signature {
    fn with_key<T: SigningKey>(
        key: T,
        message: &[u8],
        opts: &SignOptions,
        delta: u64,
    ) -> mail_auth::Result<Signature> {
        let mut signer = DkimSigner::from_key(key)
            .domain(opts.domain.as_str())
            .selector(opts.selector.as_str())
            .headers(opts.headers.iter().map(String::as_str))
            .body_length(opts.body_length);
        if delta > 0 {
            signer = signer.expiration(delta);
        }
        signer.sign(message)
    }

    let der = PrivatePkcs8KeyDer::from_pem_slice(key.private_pem.as_bytes())
        .expect("private key is PKCS#8 PEM");
    let result = match key.kind {
        KeyKind::Rsa(_) => {
            let rsa = RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs8(der))
                .expect("aws-lc-rs loads the RSA key");
            with_key(rsa, message, opts, delta)
        }
        KeyKind::Ed25519 => {
            let ed = Ed25519Key::from_pkcs8_maybe_unchecked_der(der.secret_pkcs8_der())
                .expect("aws-lc-rs loads the Ed25519 key");
            with_key(ed, message, opts, delta)
        }
    };
    result.unwrap_or_else(|e| panic!("mail-auth DKIM signing failed: {e}"))
}

/// PKCS#1 v1.5 signature of `data` through `openssl dgst`.
fn rsa_sign(private_pem: &str, sha1: bool, data: &[u8]) -> Vec<u8> {
    // openssl wants the key in a file; the temporary file is private to us
    // (mode 0600) and removed when dropped.
    let mut key_file = tempfile::NamedTempFile::new().expect("create a temporary key file");
    key_file
        .write_all(private_pem.as_bytes())
        .and_then(|()| key_file.flush())
        .expect("write the temporary key file");
    let key_path = key_file.path().to_str().expect("temporary path is UTF-8");
    let digest = if sha1 { "-sha1" } else { "-sha256" };
    openssl(&["dgst", digest, "-sign", key_path], data)
}

/// Runs `openssl` with `input` on stdin and returns its stdout.
fn openssl(args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run openssl (is it installed?): {e}"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    // Feed stdin from another thread: a large input must not deadlock
    // against openssl filling its stdout pipe.
    let output = std::thread::scope(|scope| {
        scope.spawn(move || {
            let _ = stdin.write_all(input);
        });
        child.wait_with_output()
    })
    .unwrap_or_else(|e| panic!("openssl {}: {e}", args.join(" ")));
    if !output.status.success() {
        panic!(
            "openssl {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    output.stdout
}

fn prepend(header: &[u8], message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(header.len() + message.len());
    out.extend_from_slice(header);
    out.extend_from_slice(message);
    out
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Splits a message at the first empty line. Bare LF line endings are
/// accepted as well as CRLF.
fn split_message(message: &[u8]) -> (&[u8], &[u8]) {
    let mut line_start = 0;
    while line_start < message.len() {
        let line_end = message[line_start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(message.len(), |p| line_start + p + 1);
        let line = &message[line_start..line_end];
        if line == b"\r\n" || line == b"\n" {
            return (&message[..line_start], &message[line_end..]);
        }
        line_start = line_end;
    }
    (message, &[])
}

/// Header fields as (name, value) with folding line breaks left in the value.
fn parse_headers(block: &[u8]) -> Vec<(&[u8], &[u8])> {
    let mut fields: Vec<(usize, usize)> = Vec::new(); // (start, end) of each field
    let mut pos = 0;
    while pos < block.len() {
        let end = block[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(block.len(), |p| pos + p + 1);
        if matches!(block[pos], b' ' | b'\t') {
            if let Some(last) = fields.last_mut() {
                last.1 = end; // continuation line
            }
        } else {
            fields.push((pos, end));
        }
        pos = end;
    }
    fields
        .into_iter()
        .filter_map(|(start, end)| {
            let field = &block[start..end];
            let colon = field.iter().position(|&b| b == b':')?;
            Some((&field[..colon], &field[colon + 1..]))
        })
        .collect()
}

/// RFC 6376 §3.4.2 relaxed header canonicalization, appended to `out` with
/// its CRLF.
fn relaxed_header(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.extend(trim_wsp(name).iter().map(u8::to_ascii_lowercase));
    out.push(b':');
    let unfolded: Vec<u8> = value
        .iter()
        .copied()
        .filter(|&b| b != b'\r' && b != b'\n')
        .collect();
    push_collapsed(trim_wsp(&unfolded), out);
    out.extend_from_slice(b"\r\n");
}

/// Strips leading and trailing WSP (space and tab, RFC 5234), nothing else.
fn trim_wsp(text: &[u8]) -> &[u8] {
    let is_wsp = |b: &u8| *b == b' ' || *b == b'\t';
    let start = text.iter().position(|b| !is_wsp(b)).unwrap_or(text.len());
    let end = text
        .iter()
        .rposition(|b| !is_wsp(b))
        .map_or(start, |p| p + 1);
    &text[start..end]
}

/// RFC 6376 §3.4.4 relaxed body canonicalization.
fn relaxed_body(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut pending_empty_lines = 0;
    let mut lines: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
    if body.ends_with(b"\n") {
        lines.pop(); // the split after the final line ending is not a line
    }
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let mut canonical = Vec::with_capacity(line.len());
        push_collapsed(line, &mut canonical);
        while canonical.last() == Some(&b' ') {
            canonical.pop();
        }
        if canonical.is_empty() {
            // Trailing empty lines are dropped, so only emit them once a
            // non-empty line follows.
            pending_empty_lines += 1;
            continue;
        }
        for _ in 0..pending_empty_lines {
            out.extend_from_slice(b"\r\n");
        }
        pending_empty_lines = 0;
        out.extend_from_slice(&canonical);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Appends `text` with every run of spaces and tabs reduced to one space.
fn push_collapsed(text: &[u8], out: &mut Vec<u8>) {
    let mut in_space = false;
    for &b in text {
        if b == b' ' || b == b'\t' {
            if !in_space {
                out.push(b' ');
            }
            in_space = true;
        } else {
            out.push(b);
            in_space = false;
        }
    }
}

/// Lays out `name: tag1; tag2; ...` folded before 78 columns. Tags are only
/// separated at `; `, where folding is invisible to relaxed canonicalization;
/// the b= value, too long for one line, goes on lines of its own, which
/// verifiers ignore (FWS is allowed inside base64, and the b= value is
/// removed before hashing anyway).
fn fold_header(name: &str, tags: &[String]) -> String {
    const WIDTH: usize = 76;
    let mut out = format!("{name}:");
    let mut column = out.len();
    for (i, tag) in tags.iter().enumerate() {
        let piece = if i + 1 < tags.len() {
            format!("{tag};")
        } else {
            tag.clone()
        };
        if column + 1 + piece.len() <= WIDTH {
            out.push(' ');
            out.push_str(&piece);
            column += 1 + piece.len();
        } else if tag.starts_with("b=") {
            for chunk in piece.as_bytes().chunks(WIDTH - 1) {
                out.push_str("\r\n\t");
                out.push_str(std::str::from_utf8(chunk).expect("tags are ASCII"));
                column = 1 + chunk.len();
            }
        } else {
            // A tag longer than a line (a long h=) stays whole: lines may be
            // up to 998 characters.
            out.push_str("\r\n\t");
            out.push_str(&piece);
            column = 1 + piece.len();
        }
    }
    out.push_str("\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relaxed_body_examples_from_rfc6376() {
        // RFC 6376 §3.4.5 example body.
        assert_eq!(
            relaxed_body(b" C \r\nD \t E\r\n\r\n\r\n"),
            b" C\r\nD E\r\n".to_vec()
        );
        assert_eq!(relaxed_body(b""), b"".to_vec());
        assert_eq!(relaxed_body(b"\r\n\r\n"), b"".to_vec());
        assert_eq!(relaxed_body(b"no newline"), b"no newline\r\n".to_vec());
        assert_eq!(relaxed_body(b"a\n\nb\n"), b"a\r\n\r\nb\r\n".to_vec());
    }

    #[test]
    fn relaxed_header_examples_from_rfc6376() {
        // RFC 6376 §3.4.5 example headers.
        let (block, _) = split_message(b"A: X\r\nB : Y\t\r\n\tZ  \r\n\r\n");
        let mut out = Vec::new();
        for (name, value) in parse_headers(block) {
            relaxed_header(name, value, &mut out);
        }
        assert_eq!(out, b"a:X\r\nb:Y Z\r\n".to_vec());
    }

    #[test]
    fn split_message_handles_lf_and_missing_body() {
        assert_eq!(
            split_message(b"A: 1\n\nbody"),
            (&b"A: 1\n"[..], &b"body"[..])
        );
        assert_eq!(split_message(b"A: 1\r\n"), (&b"A: 1\r\n"[..], &b""[..]));
    }

    #[test]
    fn folded_header_stays_narrow_and_unfolds_to_the_signed_form() {
        let tags: Vec<String> = vec![
            "v=1".into(),
            "a=rsa-sha256".into(),
            "h=From:To:Subject:Date:Message-ID".into(),
            format!("bh={}", "A".repeat(44)),
            format!("b={}", "B".repeat(344)),
        ];
        let header = fold_header("DKIM-Signature", &tags);
        for line in header.split("\r\n") {
            assert!(line.len() <= 78, "{line:?}");
        }
        let unfolded = header.replace("\r\n\t", " ");
        assert!(unfolded.starts_with("DKIM-Signature: v=1; a=rsa-sha256; h=From"));
        let compact = unfolded.replace(' ', "");
        assert!(compact.contains(&format!("b={}", "B".repeat(344))));
    }
}
