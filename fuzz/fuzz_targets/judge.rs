//! Parsing and judgement of any message, against a real DNS server on
//! 127.0.0.1 (testkit's) serving `zone.txt`: the keys, SPF and DMARC
//! records of the seeds' senders, so signatures are checked for real and
//! nothing leaves the machine. Whatever the bytes, the judgement finishes without a panic,
//! serialises, and never acknowledges or answers what is not authenticated.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use legal_intake::config::Config;
use legal_intake::decide::{Decision, History};
use legal_intake::judge::Judge;
use libfuzzer_sys::fuzz_target;
use testkit::dns::{DnsServer, Zone};

struct Rig {
    runtime: tokio::runtime::Runtime,
    judge: Judge,
    _dns: DnsServer,
}

fn rig() -> &'static Rig {
    static RIG: OnceLock<Rig> = OnceLock::new();
    RIG.get_or_init(|| {
        // The zone testkit-samples wrote with the seeds in corpus/judge,
        // so their signatures verify and mutations start from a pass.
        let zone = Zone::parse(include_str!("../zone.txt")).expect("the zone");
        let dns = DnsServer::start(zone).expect("start the DNS server");
        let text = format!(
            r#"[imap]
host = "127.0.0.1"
tls = "none"
username = "legal@ivpn.net"
password_file = "imap.password"

[smtp]
host = "127.0.0.1"
tls = "none"
from = "IVPN Legal <legal@ivpn.net>"

[dns]
nameservers = ["{}"]
timeout_secs = 1

[auth]
trusted_mx = ["mx1.ivpn.net"]
time_budget_secs = 5

[store]
database = "cases.sqlite"

[[agency]]
name = "Royal Gibraltar Police"
domains = ["police.gi"]

[[agency]]
name = "HM Government of Gibraltar"
domains = ["gibraltar.gov.gi"]
"#,
            dns.addr()
        );
        let config = Config::parse(Path::new("/fuzz/config.toml"), &text).expect("the config");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let judge = runtime
            .block_on(async { Judge::new(&config) })
            .expect("the judge");
        Rig {
            runtime,
            judge,
            _dns: dns,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let rig = rig();
    let judgement = rig
        .runtime
        .block_on(rig.judge.judge(data, &History::default()));
    serde_json::to_string(&judgement).expect("the judgement serialises");
    let verdict = &judgement.verdict;
    if verdict.decision == Decision::Acknowledge {
        assert_eq!(judgement.evidence.dmarc.result.as_str(), "pass");
        assert!(verdict.agency.is_some());
        assert!(judgement.inbound.from.is_ok());
    }
    if verdict.reply {
        assert!(matches!(
            verdict.decision,
            Decision::Acknowledge | Decision::Reject
        ));
    }
});
