#!/usr/bin/env bash
# End-to-end check, by hand, of the test identity provider (provider.mjs) and the Dovecot
# configuration in dovecot-oauth2.md: fetches tokens with curl for each grant, then logs in
# with Python's imaplib and smtplib (XOAUTH2 and OAUTHBEARER, IMAP and submission), for
# per-user tokens (jwt-bearer, Google style) and one app token for every mailbox
# (client_credentials, Microsoft 365 style), and shows what a refused token gets back.
#
#   bash tests/oauth/try-by-hand.sh     (needs node, npm, dovecot-imapd, dovecot-submissiond,
#                                         openssl, curl, python3; run as root so far, the
#                                         non-root settings mirror tests/support/dovecot.rs)
#
# Everything runs on 127.0.0.1 in a temp dir that is removed at the end, with the
# processes it started (the provider and a private Dovecot).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
DOVECOT=/usr/sbin/dovecot
[ -d "$HERE/node_modules/oidc-provider" ] || (cd "$HERE" && npm ci --no-audit --no-fund >&2)

DIR=$(mktemp -d /tmp/postern-oauth-XXXXXX)
chmod 755 "$DIR" # Dovecot's unprivileged auth process reads the keys and conf files here
PROVIDER_PID=
cleanup() {
  set +e
  if [ -f "$DIR/dovecot.conf" ] && [ -f "$DIR/run/master.pid" ]; then
    "$DOVECOT" -c "$DIR/dovecot.conf" stop 2>/dev/null
  fi
  if [ -n "$PROVIDER_PID" ]; then
    kill "$PROVIDER_PID" 2>/dev/null
    wait "$PROVIDER_PID" 2>/dev/null
  fi
  exec 3<&- 2>/dev/null
  rm -rf "$DIR"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
b64u() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
# jwt HEADER_JSON CLAIMS_JSON PRIVATE_KEY_PEM: an RS256-signed JWT
jwt() {
  local h p s
  h=$(printf '%s' "$1" | b64u)
  p=$(printf '%s' "$2" | b64u)
  s=$(printf '%s.%s' "$h" "$p" | openssl dgst -sha256 -sign "$3" -binary | b64u)
  printf '%s.%s.%s' "$h" "$p" "$s"
}
json_field() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

# ---- keys: a service account (Google) and an app certificate (Microsoft 365) ----------
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$DIR/sa.pem" 2>/dev/null
openssl pkey -in "$DIR/sa.pem" -pubout -out "$DIR/sa.pub"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$DIR/app.pem" 2>/dev/null
openssl req -x509 -new -key "$DIR/app.pem" -subj /CN=postern-test-app -days 1 -out "$DIR/app.crt" 2>/dev/null
APP_SECRET=$(openssl rand -hex 16)
SA=gateway@project.iam.gserviceaccount.com

# ---- the provider ------------------------------------------------------------------------
cat >"$DIR/provider.json" <<EOF
{
  "port": 0,
  "token_ttl_seconds": 600,
  "signing_kid": "postern-test-1",
  "dovecot_keys_dir": "$DIR/keys",
  "clients": [
    {"client_id": "m365-app", "grant": "client_credentials", "auth": "client_secret_post",
     "client_secret": "$APP_SECRET"},
    {"client_id": "m365-basic", "grant": "client_credentials", "auth": "client_secret_basic",
     "client_secret": "$APP_SECRET"},
    {"client_id": "m365-cert", "grant": "client_credentials", "auth": "private_key_jwt",
     "public_key_file": "$DIR/app.crt"},
    {"client_id": "$SA", "grant": "jwt_bearer", "public_key_file": "$DIR/sa.pub"}
  ]
}
EOF
mkfifo "$DIR/provider.out"
node "$HERE/provider.mjs" "$DIR/provider.json" >"$DIR/provider.out" 2>"$DIR/provider.log" &
PROVIDER_PID=$!
exec 3<"$DIR/provider.out"
if ! read -r -t 20 ready port <&3 || [ "$ready" != ready ]; then
  echo "provider did not start:" >&2
  cat "$DIR/provider.log" >&2
  exit 1
fi
ISSUER=http://127.0.0.1:$port
TOKEN_URL=$ISSUER/token
echo "== provider ready on port $port; Dovecot's key: $(cd "$DIR" && find keys -type f)"

# ---- tokens, with curl -------------------------------------------------------------------
M365_SCOPE=https://outlook.office365.com/.default
GOOGLE_SCOPE=https://mail.google.com/
now=$(date +%s)

APP_TOKEN=$(curl -sf -d grant_type=client_credentials -d client_id=m365-app \
  --data-urlencode "client_secret=$APP_SECRET" --data-urlencode "scope=$M365_SCOPE" "$TOKEN_URL" |
  json_field access_token)
echo "== client_credentials, client_secret_post: token of ${#APP_TOKEN} bytes"

BASIC_TOKEN=$(curl -sf -u "m365-basic:$APP_SECRET" -d grant_type=client_credentials \
  --data-urlencode "scope=$M365_SCOPE" "$TOKEN_URL" | json_field access_token)
echo "== client_credentials, client_secret_basic: token of ${#BASIC_TOKEN} bytes"

X5T=$(openssl x509 -in "$DIR/app.crt" -outform DER | openssl dgst -sha1 -binary | b64u)
CLIENT_ASSERTION=$(jwt "{\"alg\":\"RS256\",\"typ\":\"JWT\",\"x5t\":\"$X5T\"}" \
  "{\"iss\":\"m365-cert\",\"sub\":\"m365-cert\",\"aud\":\"$TOKEN_URL\",\"jti\":\"$(openssl rand -hex 8)\",\"iat\":$now,\"nbf\":$now,\"exp\":$((now + 300))}" \
  "$DIR/app.pem")
CERT_TOKEN=$(curl -sf -d grant_type=client_credentials -d client_id=m365-cert \
  -d client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer \
  -d "client_assertion=$CLIENT_ASSERTION" --data-urlencode "scope=$M365_SCOPE" "$TOKEN_URL" |
  json_field access_token)
echo "== client_credentials, private_key_jwt: token of ${#CERT_TOKEN} bytes"

user_token() { # user_token SUB: a jwt-bearer (Google service account) token for SUB
  local assertion
  assertion=$(jwt '{"alg":"RS256","typ":"JWT"}' \
    "{\"iss\":\"$SA\",\"scope\":\"$GOOGLE_SCOPE\",\"aud\":\"$TOKEN_URL\",\"sub\":\"$1\",\"iat\":$now,\"exp\":$((now + 3600))}" \
    "$DIR/sa.pem")
  curl -sf -d grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer -d "assertion=$assertion" \
    "$TOKEN_URL" | json_field access_token
}
ALICE_TOKEN=$(user_token alice@example.test)
BOB_TOKEN=$(user_token bob@example.test)
echo "== jwt-bearer for alice and bob: tokens of ${#ALICE_TOKEN} and ${#BOB_TOKEN} bytes"

EXPIRED_TOKEN=$(curl -sf -XPOST "$ISSUER/__test/mint?sub=m365-app&scope=$M365_SCOPE&exp_in=-60&iat_in=-700" |
  json_field access_token)
FORGED_TOKEN=$(curl -sf -XPOST "$ISSUER/__test/mint?sub=m365-app&scope=$M365_SCOPE&key=foreign" |
  json_field access_token)
echo "== token requests answered: $(curl -sf "$ISSUER/__test/count")"

# ---- a private Dovecot ---------------------------------------------------------------------
IMAP_PORT=$(free_port)
SUBMISSION_PORT=$(free_port)
RELAY_PORT=$(free_port) # the Python part below listens there
if [ "$(id -u)" = 0 ]; then
  LOGIN_USER=dovenull INTERNAL_USER=dovecot INTERNAL_GROUP=dovecot
  MAIL_UID=$(id -u nobody) MAIL_GID=$(id -g nobody)
  CHROOT=
else
  LOGIN_USER=$(id -un) INTERNAL_USER=$(id -un) INTERNAL_GROUP=$(id -gn)
  MAIL_UID=$(id -u) MAIL_GID=$(id -g)
  CHROOT='chroot ='
fi
mkdir -p "$DIR/mail" "$DIR/passwd.d"
chown "$MAIL_UID:$MAIL_GID" "$DIR/mail"
for u in alice@example.test bob@example.test; do
  echo "$u:{PLAIN}$(openssl rand -hex 12)::::::" >"$DIR/passwd.d/$u"
done
chmod 644 "$DIR"/passwd.d/*

# Per-user tokens (jwt-bearer): the token's sub must be the login name.
cat >"$DIR/dovecot-oauth2-user.conf.ext" <<EOF
introspection_mode = local
local_validation_key_dict = fs:posix:prefix=$DIR/keys/
issuers = $ISSUER
username_attribute = sub
username_format = %Lu
scope = $GOOGLE_SCOPE
active_attribute =
active_value =
EOF
# App tokens (client_credentials): any login name; the token must carry the app scope.
cat >"$DIR/dovecot-oauth2-app.conf.ext" <<EOF
introspection_mode = local
local_validation_key_dict = fs:posix:prefix=$DIR/keys/
issuers = $ISSUER
username_attribute = sub
username_format = any-user
scope = $M365_SCOPE
active_attribute =
active_value =
EOF
chmod 644 "$DIR"/*.conf.ext

cat >"$DIR/dovecot.conf" <<EOF
base_dir = $DIR/run
state_dir = $DIR/state
instance_name = postern-oauth-$IMAP_PORT
protocols = imap submission
listen = 127.0.0.1
log_path = $DIR/dovecot.log
info_log_path = $DIR/dovecot.log
auth_verbose = yes
auth_mechanisms = plain login xoauth2 oauthbearer
auth_cache_size = 0
auth_failure_delay = 0
disable_plaintext_auth = no
ssl = no
login_trusted_networks = 127.0.0.0/8 ::1
mail_location = maildir:$DIR/mail/%u/Maildir
default_login_user = $LOGIN_USER
default_internal_user = $INTERNAL_USER
default_internal_group = $INTERNAL_GROUP
mail_uid = $MAIL_UID
mail_gid = $MAIL_GID
first_valid_uid = 1
first_valid_gid = 0
submission_relay_host = 127.0.0.1
submission_relay_port = $RELAY_PORT
passdb {
  driver = passwd-file
  mechanisms = plain login
  args = scheme=PLAIN $DIR/passwd.d/%u
}
passdb {
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = $DIR/dovecot-oauth2-user.conf.ext
}
passdb {
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = $DIR/dovecot-oauth2-app.conf.ext
}
userdb {
  driver = passwd-file
  args = $DIR/passwd.d/%u
  default_fields = home=$DIR/mail/%u
}
service imap-login {
  $CHROOT
  inet_listener imap {
    address = 127.0.0.1
    port = $IMAP_PORT
  }
  inet_listener imaps {
    port = 0
  }
}
service submission-login {
  $CHROOT
  inet_listener submission {
    address = 127.0.0.1
    port = $SUBMISSION_PORT
  }
}
service anvil {
  $CHROOT
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
EOF
# Without -F the master returns once every listener is bound (then runs in the background).
"$DOVECOT" -c "$DIR/dovecot.conf"
echo "== dovecot $("$DOVECOT" --version) on imap $IMAP_PORT, submission $SUBMISSION_PORT"

# ---- logins --------------------------------------------------------------------------------
export IMAP_PORT SUBMISSION_PORT RELAY_PORT APP_TOKEN BASIC_TOKEN CERT_TOKEN ALICE_TOKEN BOB_TOKEN \
  EXPIRED_TOKEN FORGED_TOKEN
status=0
python3 - <<'PY' || status=$?
import base64, imaplib, os, smtplib, socket, threading

E = os.environ
IMAP, SUBM = int(E["IMAP_PORT"]), int(E["SUBMISSION_PORT"])
failures = []

# Dovecot's submission service connects to its relay as soon as a client has logged in:
# a minimal SMTP server on the relay port that accepts everything and keeps nothing.
def relay_session(conn):
    with conn:
        f = conn.makefile("rb")
        conn.sendall(b"220 relay.test ESMTP\r\n")
        for raw in f:
            verb = raw.strip().split(b" ")[0].upper()
            if verb == b"DATA":
                conn.sendall(b"354 go on\r\n")
                for body in f:
                    if body in (b".\r\n", b".\n"):
                        break
            reply = {b"QUIT": b"221 bye", b"EHLO": b"250-relay.test\r\n250 8BITMIME"}.get(verb, b"250 ok")
            conn.sendall(reply + b"\r\n")
            if verb == b"QUIT":
                return

relay = socket.create_server(("127.0.0.1", int(E["RELAY_PORT"])))
def relay_loop():
    while True:
        conn, _ = relay.accept()
        threading.Thread(target=relay_session, args=(conn,), daemon=True).start()
threading.Thread(target=relay_loop, daemon=True).start()

def xoauth2(user, token):
    return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()

def oauthbearer(user, token):
    return f"n,a={user},\x01auth=Bearer {token}\x01\x01".encode()

def check(what, ok, detail):
    print(f"{'ok  ' if ok else 'FAIL'} {what}: {detail}")
    if not ok:
        failures.append(what)

def imap_login(mech, user, token):
    """(accepted, detail) for an IMAP AUTHENTICATE with imaplib."""
    initial = (xoauth2 if mech == "XOAUTH2" else oauthbearer)(user, token)
    challenges = []
    def auth(challenge):
        if not challenges:
            challenges.append(challenge)
            return initial
        challenges.append(challenge)  # the error challenge: answer with an empty line / ^A
        return b"" if mech == "XOAUTH2" else b"\x01"
    with imaplib.IMAP4("127.0.0.1", IMAP) as imap:
        try:
            typ, data = imap.authenticate(mech, auth)
        except imaplib.IMAP4.error as e:
            return False, f"refused: {e}; challenge {challenges[1:]}"
        typ, data = imap.select("INBOX")
        return True, f"{typ} SELECT INBOX: {data[0].decode()} messages"

def smtp_login(mech, user, token, initial_response_ok):
    initial = (xoauth2 if mech == "XOAUTH2" else oauthbearer)(user, token)
    challenges = []
    def auth(challenge=None):
        if challenge is None or not challenges:
            challenges.append(challenge)
            return initial.decode()
        challenges.append(challenge)
        return "" if mech == "XOAUTH2" else "\x01"
    smtp = smtplib.SMTP("127.0.0.1", SUBM)
    try:
        smtp.ehlo("client.example")
        try:
            code, resp = smtp.auth(mech, auth, initial_response_ok=initial_response_ok)
        except smtplib.SMTPAuthenticationError as e:
            return False, f"refused: {e.smtp_code} {e.smtp_error.decode()}; challenge {challenges[1:]}"
        except smtplib.SMTPException as e:
            return False, f"error: {e}"
        refused = smtp.sendmail(user, [user], f"From: {user}\r\nTo: {user}\r\nSubject: t\r\n\r\nhi\r\n")
        return True, f"{code} {resp.decode()}; then a mail through the relay, refused: {refused}"
    finally:
        smtp.close()

A, B = "alice@example.test", "bob@example.test"
cases = [
    # (what, mech, user, token, should be accepted)
    ("per-user token (jwt-bearer), its own user", "XOAUTH2", A, E["ALICE_TOKEN"], True),
    ("per-user token, OAUTHBEARER", "OAUTHBEARER", B, E["BOB_TOKEN"], True),
    ("per-user token of bob used for alice", "XOAUTH2", A, E["BOB_TOKEN"], False),
    ("app token (client_secret_post) for alice", "XOAUTH2", A, E["APP_TOKEN"], True),
    ("same app token for bob", "XOAUTH2", B, E["APP_TOKEN"], True),
    ("app token (client_secret_basic), OAUTHBEARER", "OAUTHBEARER", A, E["BASIC_TOKEN"], True),
    ("app token (private_key_jwt) for bob", "XOAUTH2", B, E["CERT_TOKEN"], True),
    ("expired app token", "XOAUTH2", A, E["EXPIRED_TOKEN"], False),
    ("forged app token (unknown signing key)", "XOAUTH2", A, E["FORGED_TOKEN"], False),
    ("garbage token", "OAUTHBEARER", A, "not-a-token", False),
]
print("--- IMAP (imaplib, AUTHENTICATE without SASL-IR)")
for what, mech, user, token, want in cases:
    ok, detail = imap_login(mech, user, token)
    check(f"IMAP {mech} {what}", ok == want, detail)

print("--- submission (smtplib, AUTH without initial response, then 334)")
for what, mech, user, token, want in cases:
    ok, detail = smtp_login(mech, user, token, initial_response_ok=False)
    check(f"submission {mech} {what}", ok == want, detail)

print("--- submission (smtplib, AUTH with the initial response on the AUTH line)")
for what, user, token in (("app token", A, E["APP_TOKEN"]), ("per-user token", A, E["ALICE_TOKEN"])):
    n = len("AUTH XOAUTH2 " + base64.b64encode(xoauth2(user, token)).decode())
    ok, detail = smtp_login("XOAUTH2", user, token, initial_response_ok=True)
    check(f"submission XOAUTH2 initial response, {what}, {n}-byte line", ok == (n <= 1030), detail)

# ---- raw transcripts of a refusal -------------------------------------------------------
def lines(sock):
    buf = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return
        buf += chunk
        while b"\r\n" in buf:
            line, buf = buf.split(b"\r\n", 1)
            yield line.decode()

def show(direction, line):
    text = line if len(line) <= 100 else line[:60] + f"...({len(line)} bytes)"
    print(f"  {direction} {text}")
    if direction == "S:" and line.split(" ")[0] in ("+", "334") and len(line.split(" ")) == 2:
        try:
            print(f"       base64 of {base64.b64decode(line.split(' ')[1]).decode()!r}")
        except Exception:
            pass

def converse(port, script, greeting_lines=1):
    """script: list of (line to send, number of server lines to read after it)."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        r = lines(s)
        got = []
        for _ in range(greeting_lines):
            line = next(r)
            show("S:", line)
        for send, expect in script:
            show("C:", send)
            s.sendall(send.encode() + b"\r\n")
            for _ in range(expect):
                line = next(r)
                got.append(line)
                show("S:", line)
                while line.startswith("250-"):
                    line = next(r)
                    got.append(line)
                    show("S:", line)
        return got

b64 = lambda raw: base64.b64encode(raw).decode()
print("--- raw IMAP refusal, XOAUTH2 (bob's token as alice)")
converse(IMAP, [("a1 AUTHENTICATE XOAUTH2", 1), (b64(xoauth2(A, E["BOB_TOKEN"])), 1), ("", 1), ("a2 LOGOUT", 2)])
print("--- raw IMAP refusal, OAUTHBEARER with SASL-IR (expired token)")
converse(IMAP, [(f"a1 AUTHENTICATE OAUTHBEARER {b64(oauthbearer(A, E['EXPIRED_TOKEN']))}", 1),
                (b64(b"\x01"), 1), ("a2 LOGOUT", 2)])
print("--- raw submission refusal, XOAUTH2 (forged token)")
converse(SUBM, [("EHLO client.example", 1), ("AUTH XOAUTH2", 1), (b64(xoauth2(A, E["FORGED_TOKEN"])), 1),
                ("", 1), ("QUIT", 1)])
print("--- raw submission refusal, OAUTHBEARER (expired token)")
converse(SUBM, [("EHLO client.example", 1), ("AUTH OAUTHBEARER", 1), (b64(oauthbearer(A, E["EXPIRED_TOKEN"])), 1),
                ("AQ==", 1), ("QUIT", 1)])

# ---- how long may an AUTH line be? ----------------------------------------------------------
def submission_auth_line_ok(n):
    """Is 'AUTH XOAUTH2 <n base64 chars>' read as an AUTH command (not 'too long')?"""
    with socket.create_connection(("127.0.0.1", SUBM)) as s:
        r = lines(s)
        next(r)
        s.sendall(b"EHLO client.example\r\n")
        while next(r).startswith("250-"):
            pass
        s.sendall(b"AUTH XOAUTH2 " + b"A" * n + b"\r\n")
        reply = next(r)
        return "too long" not in reply.lower(), reply

def imap_auth_line_ok(n):
    with socket.create_connection(("127.0.0.1", IMAP)) as s:
        r = lines(s)
        next(r)
        try:
            s.sendall(b"a1 AUTHENTICATE XOAUTH2 " + b"A" * n + b"\r\n")
            reply = next(r)
        except (ConnectionResetError, BrokenPipeError, StopIteration):
            return False, "(connection closed without a reply)"
        return "too long" not in reply.lower(), reply

def largest(ok, hi):
    lo = 0  # ok(lo) holds, ok(hi) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid)[0]:
            lo = mid
        else:
            hi = mid
    return lo

n = largest(submission_auth_line_ok, 20000)
print(f"--- submission: longest accepted 'AUTH XOAUTH2 <initial response>' line: "
      f"{len('AUTH XOAUTH2 ') + n} bytes + CRLF (initial response {n} bytes)")
print(f"    one more byte: {submission_auth_line_ok(n + 1)[1]!r}")
print(f"    at the limit:  {submission_auth_line_ok(n)[1]!r}")

def submission_continuation_ok(n):
    with socket.create_connection(("127.0.0.1", SUBM)) as s:
        r = lines(s)
        next(r)
        s.sendall(b"EHLO client.example\r\nAUTH XOAUTH2\r\n")
        while next(r).startswith("250-"):
            pass
        next(r)  # 334
        s.sendall(b"A" * n + b"\r\n")
        reply = next(r)
        return "too long" not in reply.lower(), reply

n = largest(submission_continuation_ok, 70000)
print(f"--- submission: longest accepted response line after '334 ': {n} bytes + CRLF")
print(f"    one more byte: {submission_continuation_ok(n + 1)[1]!r}")
n = largest(imap_auth_line_ok, 70000)
print(f"--- IMAP: longest accepted 'a1 AUTHENTICATE XOAUTH2 <SASL-IR>' line: "
      f"{len('a1 AUTHENTICATE XOAUTH2 ') + n} bytes + CRLF")
print(f"    one more byte: {imap_auth_line_ok(n + 1)[1]!r}")
for what, tok in (("app", E["APP_TOKEN"]), ("per-user", E["ALICE_TOKEN"])):
    print(f"    XOAUTH2 line with this run's {what} token for alice: "
          f"{len('AUTH XOAUTH2 ' + b64(xoauth2(A, tok)))} bytes")

print(f"=== {len(failures)} failed: {failures}" if failures else "=== all login checks as expected")
raise SystemExit(1 if failures else 0)
PY
echo "--- dovecot.log, oauth2 lines"
grep -E 'oauth2|xoauth2|oauthbearer' "$DIR/dovecot.log" | sed -E 's/(Bearer |token=)[A-Za-z0-9._-]+/\1<token>/g' | sed -n 1,40p # not head: its early exit would SIGPIPE grep (pipefail)
echo "--- provider.log (last lines)"
tail -n 5 "$DIR/provider.log"
exit "$status"
