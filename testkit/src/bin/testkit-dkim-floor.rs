//! `testkit-dkim-floor ZONEFILE FILE...`: the floor for `legal-intake
//! verify` — what mail-auth alone costs for the same messages on this
//! machine. Every file is read, parsed with `AuthenticatedMessage::parse`
//! and its DKIM signatures verified with `verify_dkim`, the keys taken from
//! the zone file's `._domainkey.` TXT lines (no DNS at all), on one thread
//! per core with no hand-over between them. Prints the number of messages
//! whose every signature passed; exits 1 if any did not, so a bench cannot
//! time a floor that skipped the work.
//!
//! `scripts/bench-verify` times this beside `verify` and prints the ratio:
//! what the product adds (the message's own parse and hash, SPF, the
//! decision, the JSON) on top of the DKIM work every verifier must do.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::hickory_resolver::config::{ResolverConfig, ResolverOpts};
use mail_auth::{
    AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters, ResolverCache, Txt,
};

const USAGE: &str = "usage: testkit-dkim-floor ZONEFILE FILE...";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("testkit-dkim-floor: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let zone_path = args.next().ok_or(USAGE)?;
    let files: Vec<String> = args.collect();
    if files.is_empty() {
        return Err(USAGE.into());
    }
    let zone =
        std::fs::read_to_string(&zone_path).map_err(|e| format!("cannot read {zone_path}: {e}"))?;
    let keys = Arc::new(Keys::from_zone(&zone)?);

    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let next = Arc::new(AtomicUsize::new(0));
    let files = Arc::new(files);
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (keys, next, files) = (keys.clone(), next.clone(), files.clone());
            std::thread::spawn(move || worker(&keys, &next, &files))
        })
        .collect();
    let mut passed = 0;
    for w in workers {
        passed += w.join().map_err(|_| "a worker panicked".to_string())??;
    }
    if passed != files.len() {
        return Err(format!(
            "{} of {} messages did not verify",
            files.len() - passed,
            files.len()
        ));
    }
    println!("{passed}");
    Ok(())
}

/// Verifies files taken one at a time from the shared index; returns how
/// many passed.
fn worker(keys: &Keys, next: &AtomicUsize, files: &[String]) -> Result<usize, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    // Never asked: every key is in the cache.
    let verifier = MessageAuthenticator::new(
        ResolverConfig::from_name_servers(vec![]),
        ResolverOpts::default(),
    )
    .map_err(|e| format!("cannot build the verifier: {e}"))?;
    let mut passed = 0;
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(path) = files.get(i) else { break };
        let raw = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
        let Some(message) = AuthenticatedMessage::parse(&raw) else {
            continue;
        };
        let outputs =
            runtime.block_on(verifier.verify_dkim(Parameters::new(&message).with_txt_cache(keys)));
        if !outputs.is_empty() && outputs.iter().all(|o| *o.result() == DkimResult::Pass) {
            passed += 1;
        }
    }
    Ok(passed)
}

/// The zone's DKIM keys by name, parsed once.
struct Keys(HashMap<Box<str>, Txt>);

impl Keys {
    /// Reads `NAME TXT VALUE` lines whose name holds `._domainkey.`.
    fn from_zone(zone: &str) -> Result<Keys, String> {
        let mut keys = HashMap::new();
        for line in zone.lines() {
            let mut fields = line.splitn(3, char::is_whitespace);
            let (Some(name), Some(kind), Some(value)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            if !kind.eq_ignore_ascii_case("TXT") || !name.contains("._domainkey.") {
                continue;
            }
            let key = DomainKey::parse(value.trim().as_bytes())
                .map_err(|e| format!("key at {name} does not parse: {e}"))?;
            let name = format!("{}.", name.trim_end_matches('.').to_ascii_lowercase());
            keys.insert(name.into_boxed_str(), Txt::DomainKey(Arc::new(key)));
        }
        if keys.is_empty() {
            return Err("the zone file holds no ._domainkey. TXT record".into());
        }
        Ok(Keys(keys))
    }
}

impl ResolverCache<Box<str>, Txt> for Keys {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.get(name).cloned()
    }

    fn remove<Q>(&self, _: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        None
    }

    fn insert(&self, _: Box<str>, _: Txt, _: std::time::Instant) {}
}
