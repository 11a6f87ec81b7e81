"""The demo's world and its story, driven by scripts/demo.

Starts, all on 127.0.0.1 and inside one temporary folder: the loopback DNS
server with the sample senders' keys (testkit-dns), a throwaway Dovecot
(scripts/lib/dovecot.py) holding the legal@ mailbox, and an SMTP sink
(aiosmtpd) that plays the senders' mail servers. Then it starts
`legal-intake run`, delivers the sample requests into the mailbox while the
daemon is idle, waits until the daemon has filed them and answered, stops
it with SIGTERM, and prints what a mail administrator and the legal team
would look at. Everything is stopped and removed at the end.

Usage: /usr/bin/python3 scripts/lib/demo.py BINDIR WORKDIR
(Debian's python3, which sees the python3-aiosmtpd package.)
"""

import email
import email.policy
import glob
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dovecot  # noqa: E402

from aiosmtpd.controller import Controller  # noqa: E402


class Sink:
    """Keeps every message it is given, with its envelope."""

    def __init__(self):
        self.received = []

    async def handle_DATA(self, server, session, envelope):
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


def banner(text):
    print(f"\n== {text}", flush=True)


def wait_for(what, cond, limit=60):
    start = time.time()
    while not cond():
        if time.time() - start > limit:
            raise SystemExit(f"demo: timed out waiting for {what}")
        time.sleep(0.1)


def main():
    bindir, work = sys.argv[1], sys.argv[2]
    li = os.path.join(bindir, "legal-intake")
    samples = os.path.join(work, "samples")
    subprocess.run([os.path.join(bindir, "testkit-samples"), samples], check=True)

    procs = []
    dc = None
    controller = None
    try:
        dns = subprocess.Popen(
            [os.path.join(bindir, "testkit-dns"), os.path.join(samples, "zone.txt")],
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(dns)
        dns_addr = dns.stdout.readline().split()[1]

        dovecot_dir = os.path.join(work, "dovecot")
        os.makedirs(dovecot_dir)
        dc = dovecot.start(dovecot_dir)

        sink = Sink()
        # aiosmtpd checks its own listener by connecting to it, so it needs
        # the port up front.
        smtp_port = dovecot.free_port()
        controller = Controller(sink, hostname="127.0.0.1", port=smtp_port)
        controller.start()

        config = os.path.join(work, "config.toml")
        with open(config, "w") as f:
            f.write(dc.imap_config("poll_interval_secs = 300\n"))
            f.write(
                f"""
[smtp]
host = "127.0.0.1"
port = {smtp_port}
tls = "none"
from = "IVPN Legal <legal@ivpn.net>"

[dns]
nameservers = ["{dns_addr}"]
timeout_secs = 2

[auth]
trusted_mx = ["mx1.ivpn.net"]

[store]
database = "{os.path.join(work, 'cases.sqlite')}"

[[agency]]
name = "Royal Gibraltar Police"
domains = ["police.gi"]

[[agency]]
name = "HM Government of Gibraltar"
domains = ["gibraltar.gov.gi"]
"""
            )

        def cli(*args, capture=True):
            return subprocess.run(
                [li, "--config", config, *args],
                check=True,
                text=True,
                stdout=subprocess.PIPE if capture else None,
            ).stdout

        banner(f"loopback servers: DNS {dns_addr}, IMAP 127.0.0.1:{dc.port}, SMTP sink 127.0.0.1:{smtp_port}")
        print(cli("check-config"), end="")

        banner("starting the daemon (legal-intake run): it connects and waits in IMAP IDLE")
        log_path = os.path.join(work, "daemon.log")
        log = open(log_path, "w")
        daemon = subprocess.Popen([li, "--config", config, "run"], stderr=log, stdout=log)
        procs.append(daemon)
        imap = dc.client()
        wait_for("the daemon's first pass", lambda: b"Quarantine" in b" ".join(imap.list()[1] or []))

        files = sorted(glob.glob(os.path.join(samples, "*.eml")))
        banner(f"delivering {len(files)} requests into the mailbox")
        for path in files:
            with open(path, "rb") as f:
                raw = f.read()
            imap.append("INBOX", None, None, raw)
            print(f"  {os.path.basename(path)}")

        def inbox_empty():
            imap.select("INBOX")
            typ, data = imap.uid("SEARCH", None, "ALL")
            return typ == "OK" and not data[0]

        wait_for("the inbox to be emptied", inbox_empty)
        wait_for("the replies", lambda: len(sink.received) >= 4)
        time.sleep(0.5)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
        log.close()
        print(f"daemon stopped with SIGTERM, exit status {daemon.returncode}")

        for folder in ("Processed", "Quarantine"):
            imap.select(folder)
            typ, data = imap.uid("SEARCH", None, "ALL")
            print(f"  {folder}: {len(data[0].split()) if data[0] else 0} messages")

        banner("the log lines an administrator tails (journalctl -u legal-intake)")
        with open(log_path) as f:
            for line in f:
                if " message " in line or "pass complete" in line or "reply" in line:
                    print("  " + line.rstrip())

        banner("legal-intake cases list")
        print(cli("cases", "list"), end="")
        banner("legal-intake cases show LR-2026-0001 (the police warrant, in full)")
        listing = cli("cases", "list")
        first = listing.split()[0] if listing.strip() else "LR-2026-0001"
        print(cli("cases", "show", first), end="")

        banner(f"what the senders received ({len(sink.received)} replies; forged and automatic mail got none)")
        for mail_from, rcpts, content in sink.received:
            msg = email.message_from_bytes(content, policy=email.policy.default)
            sender = mail_from if mail_from and mail_from != "<>" else ""
            print(f"--- envelope MAIL FROM:<{sender}> RCPT TO:{','.join(rcpts)}")
            for h in ("From", "To", "Subject", "Auto-Submitted", "In-Reply-To"):
                print(f"{h}: {msg[h]}")
            body = msg.get_body(preferencelist=("plain",)).get_content()
            print("\n".join("    " + l for l in body.splitlines()[:8]))
            print("    …")

        banner("legal-intake audit verify")
        print(cli("audit", "verify"), end="")
        print("\ndemo complete")
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
        if controller is not None:
            controller.stop()
        if dc is not None:
            dc.stop()


if __name__ == "__main__":
    main()
