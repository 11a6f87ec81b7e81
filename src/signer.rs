//! The DKIM signature on everything we send: the key read once from its
//! PEM file (RSA in PKCS#1 or PKCS#8, or Ed25519 in PKCS#8), and each
//! rendered message signed over the header fields an agency's filter
//! looks at.
//!
//! With [`crate::authenticate`], the only module that names mail-auth's
//! types.

use mail_auth::common::crypto::{DkimKey, Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{DkimSigner, Done};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

use crate::config::DkimSigning;

/// The header fields a reply's DKIM signature covers.
const SIGNED_HEADERS: [&str; 11] = [
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "Auto-Submitted",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
];

/// The DKIM signer for replies, its key loaded once.
pub struct Signer {
    signer: DkimSigner<DkimKey, Done>,
    /// `d=` and `s=`, for the audit events.
    pub domain: String,
    pub selector: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// Loads `dkim_signing.private_key_file`: RSA in PKCS#1 (`BEGIN RSA
    /// PRIVATE KEY`) or PKCS#8 (`BEGIN PRIVATE KEY`), Ed25519 in PKCS#8.
    /// The error says what is wrong with the file, never what is in it.
    pub fn load(cfg: &DkimSigning) -> Result<Signer, String> {
        let path = &cfg.private_key_file;
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let key = match PrivateKeyDer::from_pem_slice(&pem) {
            Ok(PrivateKeyDer::Pkcs1(der)) => {
                RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs1(der))
                    .map(DkimKey::from)
                    .map_err(|e| format!("{}: not a usable RSA key: {e}", path.display()))?
            }
            Ok(PrivateKeyDer::Pkcs8(der)) => {
                match RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs8(der.clone_key())) {
                    Ok(rsa) => DkimKey::from(rsa),
                    Err(rsa_error) => Ed25519Key::from_pkcs8_maybe_unchecked_der(
                        der.secret_pkcs8_der(),
                    )
                    .map(DkimKey::from)
                    .map_err(|_| {
                        format!(
                            "{}: a PKCS#8 key that is neither a usable RSA key ({rsa_error}) nor an Ed25519 key",
                            path.display()
                        )
                    })?,
                }
            }
            Ok(_) => {
                return Err(format!(
                    "{}: not an RSA or Ed25519 key (DKIM signs with those only)",
                    path.display()
                ));
            }
            Err(_) => {
                return Err(format!(
                    "{}: no PEM private key (expected BEGIN PRIVATE KEY or BEGIN RSA PRIVATE KEY)",
                    path.display()
                ));
            }
        };
        let signer = DkimSigner::from_key(key)
            .domain(cfg.domain.clone())
            .selector(cfg.selector.clone())
            .headers(SIGNED_HEADERS);
        Ok(Signer {
            signer,
            domain: cfg.domain.clone(),
            selector: cfg.selector.clone(),
        })
    }

    /// The message with its `DKIM-Signature` header prepended.
    pub fn sign(&self, message: &[u8]) -> anyhow::Result<Vec<u8>> {
        let signature = self
            .signer
            .sign(message)
            .map_err(|e| anyhow::anyhow!("DKIM signing failed: {e}"))?;
        let mut out = signature.to_header().into_bytes();
        out.extend_from_slice(message);
        Ok(out)
    }
}
