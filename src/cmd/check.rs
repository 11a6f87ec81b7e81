//! `check-config`: the configuration validated, the signing key and the
//! templates loaded, and with `--connect` the servers tried, one line per
//! check, like `postfix check`.
//!
//! Without `--connect` nothing leaves the machine. With it: a login to the
//! IMAP server and a look at the watched mailbox, an SMTP session up to
//! authentication (nothing is sent), and a DNS look-up of each agency
//! domain's SPF and DMARC records through the configured resolver.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::authenticate::Authenticator;
use crate::config::Config;
use crate::imap::{self, Capability};
use crate::smtp;

/// Runs the network checks, printing one line each; true when all passed.
pub async fn connect(config: &Config, out: &mut impl Write) -> anyhow::Result<bool> {
    let mut ok = true;
    let mut line = |name: &str, result: Result<String, String>| -> anyhow::Result<()> {
        match result {
            Ok(text) => writeln!(out, "{name}: ok: {text}")?,
            Err(text) => {
                ok = false;
                writeln!(out, "{name}: FAILED: {text}")?;
            }
        }
        Ok(())
    };

    line("imap", imap_check(config).await)?;
    match &config.smtp {
        Some(cfg) => {
            let result = match smtp::Client::new(cfg) {
                Ok(client) => client.probe().await,
                Err(e) => Err(format!("{e:#}")),
            };
            line("smtp", result)?;
        }
        None => line(
            "smtp",
            Ok("not configured: replies stay queued".to_string()),
        )?,
    }
    let auth = Authenticator::new(config)?;
    for agency in &config.agencies {
        for domain in &agency.domains {
            line(
                &format!("dns {domain}"),
                dns_check(&auth, domain.as_str()).await,
            )?;
        }
    }
    Ok(ok)
}

async fn imap_check(config: &Config) -> Result<String, String> {
    let cfg = &config.imap;
    let mut session = imap::connect(cfg).await.map_err(|e| e.to_string())?;
    let selected = session
        .select(&cfg.mailbox)
        .await
        .map_err(|e| e.to_string())?;
    let caps: Vec<&str> = [
        (Capability::Idle, "IDLE"),
        (Capability::Move, "MOVE"),
        (Capability::Uidplus, "UIDPLUS"),
    ]
    .iter()
    .filter(|(c, _)| session.has(*c))
    .map(|(_, n)| *n)
    .collect();
    let _ = session.logout().await;
    let mut text = format!(
        "{}:{} logged in as {}, {} holds {} messages, server has {}",
        cfg.host,
        cfg.port,
        cfg.username.as_deref().unwrap_or("-"),
        cfg.mailbox,
        selected.exists,
        if caps.is_empty() {
            "none of IDLE, MOVE, UIDPLUS".to_string()
        } else {
            caps.join(" ")
        }
    );
    if !caps.contains(&"IDLE") {
        text.push_str(&format!(
            " (no IDLE: polling every {} s)",
            cfg.poll_interval.as_secs()
        ));
    }
    Ok(text)
}

/// The agency domain's SPF and DMARC records, as the daemon's resolver
/// sees them. A missing record is reported, not a failure (DKIM alone can
/// authenticate); a resolver that cannot answer is a failure.
async fn dns_check(auth: &Authenticator, domain: &str) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let spf = auth
        .txt(&format!("{domain}."), deadline)
        .await
        .map_err(|e| format!("the resolver could not answer: {e}"))?
        .into_iter()
        .find(|r| r.to_ascii_lowercase().starts_with("v=spf1"));
    let dmarc = auth
        .txt(&format!("_dmarc.{domain}."), deadline)
        .await
        .unwrap_or_default()
        .into_iter()
        .find(|r| r.to_ascii_lowercase().starts_with("v=dmarc1"));
    Ok(format!(
        "SPF {}; DMARC {}",
        spf.as_deref().map_or("none published", |r| r),
        dmarc.as_deref().map_or("none published", |r| r)
    ))
}
