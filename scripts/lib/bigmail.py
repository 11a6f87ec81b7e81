"""`python3 scripts/lib/bigmail.py OUT.eml ZONE SIZE`: writes one large,
DKIM-signed Royal Gibraltar Police request to OUT.eml: a short text part
and a base64 attachment (random bytes, so nothing compresses or dedups),
SIZE bytes in all (within a few hundred), stored as the trusted MX
`mx1.ivpn.net` delivered it (Received line, Return-Path). The signing key
is generated now (RSA-2048, `openssl`), and its record
`big2026._domainkey.police.gi` is appended to ZONE, a testkit-dns zone
file such as testkit-corpus's, which already has police.gi's SPF and
DMARC records.

testkit-corpus writes plain-text bodies; a large real request is a PDF or
a scan, i.e. base64 in a multipart, which makes the daemon's MIME parse
decode 3/4 of the message size on top of the raw bytes. This signer is
the minimum of RFC 6376 needed for that: rsa-sha256, c=relaxed/simple.
"""

import base64
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import time

DOMAIN, SELECTOR = "police.gi", "big2026"
SIGNED = ["from", "to", "subject", "date", "message-id", "mime-version", "content-type"]


def relaxed_header(name, value):
    value = re.sub(r"[ \t]+", " ", value.replace("\r\n", "")).strip()
    return f"{name.strip().lower()}:{value}"


def simple_body(body):
    while body.endswith(b"\r\n\r\n"):
        body = body[:-2]
    return body if body.endswith(b"\r\n") or not body else body + b"\r\n"


def sign(headers, body, key):
    """Returns the DKIM-Signature header line (with CRLF) for the message
    `headers` (list of (name, value)) + `body`."""
    bh = base64.b64encode(hashlib.sha256(simple_body(body)).digest()).decode()
    tags = (f"v=1; a=rsa-sha256; c=relaxed/simple; d={DOMAIN}; s={SELECTOR}; "
            f"t={int(time.time())}; h={':'.join(SIGNED)}; bh={bh}; b=")
    by_name = {n.lower(): v for n, v in headers}
    data = "".join(relaxed_header(n, by_name[n]) + "\r\n" for n in SIGNED)
    data += relaxed_header("DKIM-Signature", tags)
    sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key], input=data.encode(),
                         stdout=subprocess.PIPE, check=True).stdout
    return f"DKIM-Signature: {tags}{base64.b64encode(sig).decode()}\r\n"


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: bigmail.py OUT.eml ZONE SIZE")
    out, zone, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with tempfile.TemporaryDirectory() as tmp:
        key = os.path.join(tmp, "key.pem")
        subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                        "-out", key], check=True, stderr=subprocess.DEVNULL)
        spki = subprocess.run(["openssl", "pkey", "-in", key, "-pubout", "-outform", "DER"],
                              stdout=subprocess.PIPE, check=True).stdout
        boundary = "=_legal-intake-bench-" + os.urandom(8).hex()
        headers = [
            ("From", "Detective Inspector <officer@police.gi>"),
            ("To", "legal@ivpn.net"),
            ("Subject", "Production order RGP/BIG/1 with scanned exhibits"),
            ("Date", time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())),
            ("Message-ID", f"<big.{os.urandom(6).hex()}@police.gi>"),
            ("MIME-Version", "1.0"),
            ("Content-Type", f'multipart/mixed; boundary="{boundary}"'),
        ]
        text = ("Pursuant to the order of the Magistrates' Court of Gibraltar, the Royal Gibraltar\r\n"
                "Police serves the attached production order and exhibits.\r\n")
        head = (f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n"
                f"--{boundary}\r\nContent-Type: application/pdf; name=\"exhibits.pdf\"\r\n"
                f"Content-Disposition: attachment; filename=\"exhibits.pdf\"\r\n"
                f"Content-Transfer-Encoding: base64\r\n\r\n").encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        # Header section, signature and trace headers come to about 1.3 KB;
        # base64 lines of 76 characters + CRLF carry 57 bytes each.
        room = size - 1300 - len(head) - len(tail)
        raw_len = max(57, room // 78 * 57)
        b64 = base64.encodebytes(os.urandom(raw_len)).replace(b"\n", b"\r\n").rstrip(b"\r\n")
        body = head + b64 + tail
        header_text = "".join(f"{n}: {v}\r\n" for n, v in headers)
        dkim = sign(headers, body, key)
        trace = ("Return-Path: <officer@police.gi>\r\n"
                 "Received: from mail.police.gi (mail.police.gi [192.0.2.10])\r\n"
                 "\tby mx1.ivpn.net (Postfix) with ESMTPS id 4Xy1Z3; "
                 + time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime()) + "\r\n")
        with open(out, "wb") as f:
            f.write((trace + dkim + header_text + "\r\n").encode() + body)
    with open(zone, "a") as f:
        f.write(f"{SELECTOR}._domainkey.{DOMAIN} TXT v=DKIM1; k=rsa; p={base64.b64encode(spki).decode()}\n")


if __name__ == "__main__":
    main()
