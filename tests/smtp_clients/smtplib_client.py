#!/usr/bin/env python3
"""Python's smtplib (and imaplib, to read the result back) driven by tests/smtp_clients.rs.

Standard library only. Two actions, each printing one JSON object on stdout:

  send   --port P --ca CA --tls implicit|starttls --auth MODE --user U --password PW
         --sender ADDR --to ADDR --subject S --message-id ID
         --body-file F --attachment-file F --save-sent PATH
      Builds an email.message.EmailMessage (UTF-8 text body read from --body-file, the
      bytes of --attachment-file as an application/octet-stream attachment), logs in and
      send_message()s it with BODY=8BITMIME. The exact bytes smtplib puts after DATA (before
      dot-stuffing) are written to --save-sent. MODE:
        auto         smtp.login(): smtplib picks the mechanism from the EHLO reply
        plain        smtp.auth('PLAIN', smtp.auth_plain): initial response
        plain-no-ir  same, initial_response_ok=False: empty 334 challenge first
        login        smtp.auth('LOGIN', smtp.auth_login): user name as initial response
        login-no-ir  same, initial_response_ok=False: both 334 prompts
      Prints {"commands": [...], "ehlo": {...}}: the verbs smtplib sent (with the SASL
      mechanism and whether an initial response was attached, never a credential) and the
      EHLO keywords it saw after TLS.

  fetch  --port P --ca CA --user U --password PW --message-id ID --save-raw PATH
      IMAP4_SSL + LOGIN, SELECT INBOX (read-only), SEARCH HEADER Message-ID, FETCH
      BODY.PEEK[]; writes the raw message to --save-raw and prints its text body, the
      SHA-256 of each attachment's decoded bytes and their file names.

Any failure (refused login, refused message, TLS error) is an uncaught exception: a
traceback on stderr and exit status 1.
"""

import argparse
import email
import email.generator
import email.policy
import hashlib
import imaplib
import io
import json
import smtplib
import ssl
import sys

VERBS = {b"EHLO", b"HELO", b"STARTTLS", b"AUTH", b"MAIL", b"RCPT", b"DATA", b"QUIT", b"RSET", b"NOOP"}


def context(ca):
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class Recorder:
    """Wraps SMTP.send to remember the command verbs, never their arguments."""

    def __init__(self, smtp):
        self.commands = []
        original = smtp.send

        def send(s):
            data = s.encode("ascii") if isinstance(s, str) else s
            if len(data) < 1000:
                words = data.rstrip(b"\r\n").split(b" ")
                verb = words[0].upper()
                if verb in VERBS:
                    entry = verb.decode()
                    if verb == b"AUTH":
                        entry += " " + words[1].decode().upper()
                        entry += " +ir" if len(words) > 2 else ""
                    self.commands.append(entry)
            return original(s)

        smtp.send = send


def build_message(args):
    msg = email.message.EmailMessage()
    msg["From"] = f"Alice <{args.sender}>"
    msg["To"] = args.to
    msg["Subject"] = args.subject
    msg["Message-ID"] = args.message_id
    msg["Date"] = "Mon, 02 Jun 2025 10:00:00 +0000"
    with open(args.body_file, "r", encoding="utf-8", newline="") as f:
        msg.set_content(f.read())
    with open(args.attachment_file, "rb") as f:
        msg.add_attachment(
            f.read(), maintype="application", subtype="octet-stream", filename="data.bin"
        )
    # A fixed boundary, so that --save-sent flattens to exactly what smtplib sends.
    msg.set_boundary("postern-test-boundary-" + args.message_id.strip("<>"))
    return msg


def flatten_like_smtplib(msg):
    """What SMTP.send_message() hands to sendmail() for this message (no SMTPUTF8 needed):
    a BytesGenerator without a policy, so it mangles body lines that start with "From "
    into ">From " as smtplib does."""
    with io.BytesIO() as out:
        g = email.generator.BytesGenerator(out)
        g.flatten(msg, linesep="\r\n")
        return out.getvalue()


def send(args):
    msg = build_message(args)
    with open(args.save_sent, "wb") as f:
        f.write(flatten_like_smtplib(msg))
    ctx = context(args.ca)
    if args.tls == "implicit":
        smtp = smtplib.SMTP_SSL("localhost", args.port, context=ctx, timeout=30)
        recorder = Recorder(smtp)
    else:
        smtp = smtplib.SMTP("localhost", args.port, timeout=30)
        recorder = Recorder(smtp)
        smtp.ehlo("python-smtplib.example")
        if not smtp.has_extn("starttls"):
            raise SystemExit("STARTTLS not offered: %r" % smtp.esmtp_features)
        smtp.starttls(context=ctx)
    smtp.ehlo("python-smtplib.example")
    ehlo = dict(smtp.esmtp_features)
    smtp.user, smtp.password = args.user, args.password
    if args.auth == "auto":
        smtp.login(args.user, args.password)
    elif args.auth == "plain":
        smtp.auth("PLAIN", smtp.auth_plain)
    elif args.auth == "plain-no-ir":
        smtp.auth("PLAIN", smtp.auth_plain, initial_response_ok=False)
    elif args.auth == "login":
        smtp.auth("LOGIN", smtp.auth_login)
    elif args.auth == "login-no-ir":
        smtp.auth("LOGIN", smtp.auth_login, initial_response_ok=False)
    else:
        raise SystemExit("unknown --auth " + args.auth)
    refused = smtp.send_message(msg, mail_options=["BODY=8BITMIME"])
    if refused:
        raise SystemExit("recipients refused: %r" % refused)
    smtp.quit()
    print(json.dumps({"commands": recorder.commands, "ehlo": ehlo}))


def fetch(args):
    imap = imaplib.IMAP4_SSL("localhost", args.port, ssl_context=context(args.ca), timeout=30)
    imap.login(args.user, args.password)
    typ, _ = imap.select("INBOX", readonly=True)
    assert typ == "OK", typ
    typ, data = imap.uid("SEARCH", None, "HEADER", "Message-ID", '"%s"' % args.message_id)
    assert typ == "OK", (typ, data)
    uids = data[0].split()
    if len(uids) != 1:
        raise SystemExit("expected one message with %s, found UIDs %r" % (args.message_id, uids))
    typ, data = imap.uid("FETCH", uids[0], "(BODY.PEEK[])")
    assert typ == "OK", (typ, data)
    raw = data[0][1]
    imap.logout()
    with open(args.save_raw, "wb") as f:
        f.write(raw)
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    attachments = [
        {
            "filename": part.get_filename(),
            "content_type": part.get_content_type(),
            "sha256": hashlib.sha256(part.get_content()).hexdigest(),
            "size": len(part.get_content()),
        }
        for part in msg.iter_attachments()
    ]
    print(
        json.dumps(
            {
                "subject": msg["Subject"],
                "body": msg.get_body(("plain",)).get_content(),
                "attachments": attachments,
            }
        )
    )


def main():
    p = argparse.ArgumentParser()
    p.add_argument("action", choices=["send", "fetch"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--tls", default="implicit")
    p.add_argument("--auth", default="auto")
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--sender")
    p.add_argument("--to")
    p.add_argument("--subject")
    p.add_argument("--message-id", required=True)
    p.add_argument("--body-file")
    p.add_argument("--attachment-file")
    p.add_argument("--save-sent")
    p.add_argument("--save-raw")
    args = p.parse_args()
    if args.action == "send":
        send(args)
    else:
        fetch(args)


if __name__ == "__main__":
    sys.exit(main())
