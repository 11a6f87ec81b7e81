//! The case board's people: account names, roles, passwords (argon2id)
//! and the random tokens of sessions and forms.
//!
//! Passwords are stored only as argon2id PHC strings with the crate's
//! defaults (version 19, m = 19 MiB, t = 2, p = 1: OWASP's recommended
//! minimum); a session cookie's token is stored only as its SHA-256, so a
//! copy of the case log opens no session. Every random byte comes from the
//! kernel (`getrandom`).

use std::fmt;
use std::str::FromStr;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde::Serialize;

/// What an account may do on the board.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads every view and downloads attachments and bundles.
    Viewer,
    /// Also moves cases along, changes fields and writes notes.
    Editor,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
        }
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "editor" => Ok(Role::Editor),
            _ => Err(format!("`{s}` is not a role; one of: viewer, editor")),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An account as stored, without its password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Account {
    #[serde(skip)]
    pub id: i64,
    pub name: String,
    pub role: Role,
    pub disabled: bool,
    pub created_at: String,
    pub changed_at: String,
}

impl Account {
    /// How the account is named as the actor of an audit event: `web:`
    /// and its name, apart from the Unix users that the CLI records.
    pub fn actor(&self) -> String {
        format!("web:{}", self.name)
    }
}

/// A signed-in session as stored (its token only as a hash).
#[derive(Debug, Clone)]
pub struct Session {
    pub account: Account,
    /// The token every form of this session carries.
    pub csrf: String,
    pub created_at: String,
    pub expires_at: String,
}

/// The shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 12;

/// The longest: argon2 takes any length, but a megabyte "password" is a
/// denial of service, not a secret.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// An account name: 1 to 32 of `a-z 0-9 . _ -`, starting with a letter or
/// digit, so that it reads the same in a log line, a URL and an audit
/// event.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c);
    if name.is_empty() || name.len() > 32 {
        return Err(format!("account name `{name}`: 1 to 32 characters"));
    }
    if !name.chars().all(ok_char) || !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!(
            "account name `{name}`: lower-case letters, digits, `.`, `_` and `-` only, starting with a letter or digit"
        ));
    }
    Ok(())
}

/// A new password, checked for length only (a passphrase manager's output
/// is fine; composition rules are not asked for, NIST SP 800-63B §5.1.1).
pub fn check_password(password: &str) -> Result<(), String> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(format!(
            "the password is shorter than {MIN_PASSWORD_CHARS} characters"
        ));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(format!(
            "the password is longer than {MAX_PASSWORD_BYTES} bytes"
        ));
    }
    Ok(())
}

/// The argon2id PHC string of a password, with a fresh 16-byte salt.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::encode_b64(&random::<16>()?)
        .map_err(|e| anyhow::anyhow!("cannot encode a salt: {e}"))?;
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("cannot hash the password: {e}"))?
        .to_string())
}

/// Whether `password` matches the stored PHC string. With no stored
/// string (no such account) the same work is done against a fixed hash,
/// so that the time taken does not tell which names exist.
pub fn verify_password(phc: Option<&str>, password: &str) -> bool {
    // The PHC string of a password nobody knows (its salt fixed; the
    // parameters are the defaults, as for every stored hash).
    const DECOY: &str = "$argon2id$v=19$m=19456,t=2,p=1$bGVnYWwtaW50YWtlLWRlY295$Ww6pvHNbtjDnnUDOJLgFtbI0MWfOiZxrHQ9e3UjbRgo";
    let stored = phc.unwrap_or(DECOY);
    let Ok(hash) = PasswordHash::new(stored) else {
        return false;
    };
    let matched = Argon2::default()
        .verify_password(password.as_bytes(), &hash)
        .is_ok();
    matched && phc.is_some() && password.len() <= MAX_PASSWORD_BYTES
}

/// A random token: 32 bytes from the kernel, as 64 hex digits.
pub fn token() -> anyhow::Result<String> {
    Ok(hex::encode(random::<32>()?))
}

fn random<const N: usize>() -> anyhow::Result<[u8; N]> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf)
        .map_err(|e| anyhow::anyhow!("no random bytes from the kernel: {e}"))?;
    Ok(buf)
}

/// Whether two tokens are equal, in time that does not depend on where
/// they first differ.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_read_the_same_everywhere() {
        for ok in ["alice", "a", "j.smith", "legal-2", "x_y", &"a".repeat(32)] {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "Alice",
            ".alice",
            "-x",
            "a b",
            "a:b",
            "a/b",
            "ü",
            &"a".repeat(33),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_password_verifies_against_its_own_hash_only() {
        let phc = hash_password("correct horse battery").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(verify_password(Some(&phc), "correct horse battery"));
        assert!(!verify_password(Some(&phc), "correct horse batterY"));
        assert!(!verify_password(None, "correct horse battery"));
        assert!(!verify_password(Some("not a phc string"), "x"));
        // A fresh salt each time.
        assert_ne!(phc, hash_password("correct horse battery").unwrap());
    }

    #[test]
    fn the_decoy_is_a_valid_hash_so_unknown_names_cost_the_same() {
        // If the decoy did not parse, a login for an unknown name would
        // return at once and so tell that the name does not exist.
        let decoy = "$argon2id$v=19$m=19456,t=2,p=1$bGVnYWwtaW50YWtlLWRlY295$Ww6pvHNbtjDnnUDOJLgFtbI0MWfOiZxrHQ9e3UjbRgo";
        assert!(PasswordHash::new(decoy).is_ok());
    }

    #[test]
    fn short_and_huge_passwords_are_refused() {
        assert!(check_password("eleven char").is_err());
        assert!(check_password("twelve chars").is_ok());
        assert!(check_password(&"x".repeat(MAX_PASSWORD_BYTES + 1)).is_err());
    }

    #[test]
    fn tokens_are_random_and_compared_whole() {
        let (a, b) = (token().unwrap(), token().unwrap());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert!(same_token(&a, &a.clone()));
        assert!(!same_token(&a, &b));
        assert!(!same_token(&a, &a[..63]));
    }
}
