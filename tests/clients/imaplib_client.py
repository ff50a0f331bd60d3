"""A mail client nobody here wrote: Python's standard imaplib, driven by tests/clients.rs.

Usage:
    imaplib_client.py HOST PORT CAFILE TLS AUTH USER PASSWORD read [MAILBOX]
    imaplib_client.py HOST PORT CAFILE TLS AUTH USER PASSWORD append FILE

TLS is "implicit" (IMAP4_SSL) or "starttls" (IMAP4 + starttls()); AUTH is "login" (the
IMAP LOGIN command, which imaplib quotes) or "plain" (AUTHENTICATE PLAIN answered after the
server's continuation). The certificate is verified against CAFILE and HOST. With
IMAPLIB_MAX_TLS=1.2 in the environment, TLS 1.3 is not offered.

"read" sends ID, logs in, selects MAILBOX (default INBOX), searches ALL and fetches RFC822
of every message.
"append" logs in, APPENDs the bytes of FILE to INBOX (one synchronizing literal), then
fetches the new message back by the UID the server reported.

Prints one JSON object on stdout; messages appear as their SHA-256, size and (up to 4 MiB)
base64 content. Any failure is an exception: non-zero exit, traceback on stderr.
"""

import base64
import hashlib
import imaplib
import json
import os
import re
import ssl
import sys


def describe(raw):
    item = {"sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw)}
    if len(raw) <= 4 * 1024 * 1024:
        item["base64"] = base64.b64encode(raw).decode("ascii")
    return item


def fetch_one(m, command, key):
    """UID FETCH or FETCH of (UID RFC822); returns (uid, raw bytes)."""
    if command == "UID":
        typ, data = m.uid("FETCH", key, "(UID RFC822)")
    else:
        typ, data = m.fetch(key, "(UID RFC822)")
    assert typ == "OK", (typ, data)
    parts = [d for d in data if isinstance(d, tuple)]
    assert len(parts) == 1, data
    envelope, raw = parts[0]
    uid = re.search(rb"UID (\d+)", envelope)
    assert uid, envelope
    return int(uid.group(1)), raw


def main():
    host, port, cafile, tls, auth, user, password, action = sys.argv[1:9]
    ctx = ssl.create_default_context(cafile=cafile)
    if os.environ.get("IMAPLIB_MAX_TLS") == "1.2":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    out = {}

    if tls == "implicit":
        m = imaplib.IMAP4_SSL(host, int(port), ssl_context=ctx, timeout=60)
    elif tls == "starttls":
        m = imaplib.IMAP4(host, int(port), timeout=60)
        out["capabilities_before_tls"] = list(m.capabilities)
        typ, data = m.starttls(ssl_context=ctx)
        assert typ == "OK", (typ, data)
    else:
        raise SystemExit(f"unknown TLS mode {tls!r}")
    out["capabilities"] = list(m.capabilities)
    out["tls_version"] = m.sock.version()

    if action == "read":
        # imaplib has no id(); xatom sends the command as written.
        typ, data = m.xatom("ID", '("name" "python-imaplib" "version" "%s")' % sys.version.split()[0])
        assert typ == "OK", (typ, data)
        out["id"] = [d.decode() for d in m.untagged_responses.pop("ID", []) if d]

    if auth == "login":
        typ, data = m.login(user, password)
    elif auth == "plain":
        secret = ("\0%s\0%s" % (user, password)).encode("utf-8")
        typ, data = m.authenticate("PLAIN", lambda _challenge: secret)
    else:
        raise SystemExit(f"unknown AUTH {auth!r}")
    assert typ == "OK", (typ, data)
    out["login"] = data[0].decode("utf-8", "replace")

    if action == "read":
        mailbox = sys.argv[9] if len(sys.argv) > 9 else "INBOX"
        typ, data = m.select(mailbox)
        assert typ == "OK", (typ, data)
        out["exists"] = int(data[0])
        typ, data = m.search(None, "ALL")
        assert typ == "OK", (typ, data)
        messages = []
        for seq in data[0].split():
            uid, raw = fetch_one(m, "SEQ", seq)
            item = describe(raw)
            item["uid"] = uid
            messages.append(item)
        out["messages"] = messages
    elif action == "append":
        with open(sys.argv[9], "rb") as f:
            message = f.read()
        typ, data = m.append("INBOX", None, None, message)
        assert typ == "OK", (typ, data)
        response = data[0].decode("utf-8", "replace")
        out["append"] = response
        appenduid = re.search(r"\[APPENDUID (\d+) (\d+)\]", response)
        assert appenduid, response
        uid = appenduid.group(2)
        typ, data = m.select("INBOX")
        assert typ == "OK", (typ, data)
        fetched_uid, raw = fetch_one(m, "UID", uid)
        assert fetched_uid == int(uid), (fetched_uid, uid)
        out["fetched_back"] = describe(raw)
        out["fetched_back"]["uid"] = fetched_uid
    else:
        raise SystemExit(f"unknown action {action!r}")

    typ, data = m.logout()
    assert typ == "BYE", (typ, data)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
