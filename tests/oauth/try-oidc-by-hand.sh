#!/usr/bin/env bash
# By-hand proof of the OpenID Connect sign-in that provider.mjs serves for postern's portal
# (README.md, "OpenID Connect sign-in"): the authorization code flow with PKCE, state and
# nonce, driven with Python's urllib and a cookie jar, no browser: discovery, the
# authorization request, the login form posted, the redirect to the callback read from the
# Location header (nothing listens there), the code exchanged with the client secret and
# the code_verifier, the ID token decoded and then verified against the JWKS (with jose, the
# library the provider uses). Also: a wrong password and a disabled account refused, an
# account with amr ["pwd","mfa"], PKCE enforced, key rotation, each broken-ID-token hook
# caught by the verification, sign-out, cancel, and the XOAUTH2 grants still working next
# to it.
#
#   bash tests/oauth/try-oidc-by-hand.sh     (needs node, npm, openssl, curl, python3)
#
# Everything runs on 127.0.0.1 over HTTPS with a throw-away CA, in a temp dir that is
# removed at the end with the provider process.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
[ -d "$HERE/node_modules/oidc-provider" ] || (cd "$HERE" && npm ci --no-audit --no-fund >&2)

DIR=$(mktemp -d /tmp/postern-oidc-XXXXXX)
PROVIDER_PID=
cleanup() {
  set +e
  if [ -n "$PROVIDER_PID" ]; then
    kill "$PROVIDER_PID" 2>/dev/null
    wait "$PROVIDER_PID" 2>/dev/null
  fi
  exec 3<&-
  if [ -n "${KEEP:-}" ]; then echo "kept $DIR" >&2; else rm -rf "$DIR"; fi
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# ---- a test CA and the provider's certificate ---------------------------------------------
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$DIR/ca-key.pem"
openssl req -x509 -new -key "$DIR/ca-key.pem" -subj "/CN=postern test CA" -days 2 \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out "$DIR/ca.pem"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$DIR/idp-key.pem"
openssl req -new -key "$DIR/idp-key.pem" -subj "/CN=idp" -out "$DIR/idp.csr"
printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "extendedKeyUsage=serverAuth" >"$DIR/leaf.ext"
openssl x509 -req -in "$DIR/idp.csr" -CA "$DIR/ca.pem" -CAkey "$DIR/ca-key.pem" -CAcreateserial \
  -days 2 -extfile "$DIR/leaf.ext" -out "$DIR/idp.pem" 2>/dev/null

# ---- the provider -------------------------------------------------------------------------
# postern's callback port is known only at test time: the harness writes CONFIG then.
# Nothing listens on it here: the script only reads the redirects' Location headers.
PORTAL_PORT=$(free_port)
CLIENT_SECRET=$(openssl rand -hex 16)
APP_SECRET=$(openssl rand -hex 16)
cat >"$DIR/provider.json" <<EOF
{
  "port": 0,
  "tls": { "cert_file": "idp.pem", "key_file": "idp-key.pem" },
  "token_ttl_seconds": 600,
  "oidc_clients": [
    { "client_id": "postern", "client_secret": "$CLIENT_SECRET",
      "redirect_uris": ["https://127.0.0.1:$PORTAL_PORT/oidc/callback"],
      "post_logout_redirect_uris": ["https://127.0.0.1:$PORTAL_PORT/"] }
  ],
  "accounts": [
    { "id": "alice", "email": "alice@example.test", "name": "Alice Liddell",
      "password": "alice-pass-1", "amr": ["pwd"] },
    { "id": "bob", "email": "bob@example.test", "name": "Bob Builder",
      "password": "bob-pass-1", "amr": ["pwd", "mfa"], "acr": "urn:example:mfa",
      "claims": { "preferred_username": "bob", "upn": "bob@corp.example.test" } },
    { "id": "carol", "email": "carol@example.test", "name": "Carol Danvers",
      "password": "carol-pass-1" }
  ],
  "clients": [
    { "client_id": "m365-app", "grant": "client_credentials", "auth": "client_secret_post",
      "client_secret": "$APP_SECRET" }
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
ISSUER=https://127.0.0.1:$port
echo "== provider ready: $ISSUER (callback https://127.0.0.1:$PORTAL_PORT/oidc/callback, nothing listening)"

# verify ID_TOKEN NONCE: verifies the ID token as the portal must (signature against the
# JWKS from discovery, iss, aud, exp, nonce); prints "valid KID" or "refused: WHY".
cat >"$DIR/verify.mjs" <<'EOF'
import { createRequire } from 'node:module';
const [token, nonce, issuer, audience, oauthDir] = process.argv.slice(2);
const jose = createRequire(`${oauthDir}/`)('jose'); // tests/oauth/node_modules
const jwks = jose.createRemoteJWKSet(new URL(`${issuer}/jwks`));
try {
  const { payload, protectedHeader } = await jose.jwtVerify(token, jwks, {
    issuer, audience, algorithms: ['RS256'],
  });
  if (payload.nonce !== nonce) throw new Error(`nonce mismatch (${payload.nonce ?? 'none'})`);
  console.log(`valid ${protectedHeader.kid}`);
} catch (e) {
  console.log(`refused: ${e.code || e.name}: ${e.message}`);
}
EOF
# Node's fetch (the JWKS download) trusts our CA through this:
export NODE_EXTRA_CA_CERTS=$DIR/ca.pem

# ---- the flows, with urllib ---------------------------------------------------------------
cat >"$DIR/flow.py" <<'EOF'
import base64, hashlib, http.cookiejar, json, os, re, secrets, ssl, subprocess, sys
import urllib.error, urllib.parse, urllib.request

ISSUER, CA, CLIENT_SECRET, PORTAL_PORT, APP_SECRET, DIR, HERE = sys.argv[1:8]
CLIENT = "postern"
REDIRECT = f"https://127.0.0.1:{PORTAL_PORT}/oidc/callback"
TLS = ssl.create_default_context(cafile=CA)
FORM = {"content-type": "application/x-www-form-urlencoded"}


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64u(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def fail(message):
    print(f"FAIL: {message}")
    sys.exit(1)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # every redirect is read, and followed by hand


class Browser:
    """A cookie jar and no automatic redirects: what a non-browser client needs."""

    def __init__(self):
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=TLS),
            urllib.request.HTTPCookieProcessor(self.jar), NoRedirect)

    def request(self, url, form=None, headers=None, quiet=False):
        url = urllib.parse.urljoin(ISSUER, url)
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        req = urllib.request.Request(url, data=data, headers={**(FORM if data else {}), **(headers or {})})
        try:
            resp = self.opener.open(req)
        except urllib.error.HTTPError as e:
            resp = e
        body = resp.read().decode()
        location = resp.headers.get("location") or ""
        if not quiet:
            shown = url.replace(ISSUER, "") if url.startswith(ISSUER) else url
            print(f"   {req.get_method()} {shorten(shown)} -> {resp.status}"
                  + (f", Location: {shorten(location)}" if location else ""))
        return resp.status, location, body

    def cookies(self):
        return sorted(f"{c.name} (path {c.path}{', Secure' if c.secure else ''})" for c in self.jar)


def shorten(text, limit=110):
    return text if len(text) <= limit else text[:limit] + "..."


def get_json(url):
    with urllib.request.urlopen(urllib.parse.urljoin(ISSUER, url), context=TLS) as resp:
        return json.loads(resp.read())


def post(url, form, headers=None):
    b = Browser()
    return b.request(url, form, headers, quiet=True)


def basic(client_id, secret):
    # RFC 6749 2.3.1: form-urlencode each part, then base64 "id:secret".
    raw = f"{urllib.parse.quote(client_id, safe='')}:{urllib.parse.quote(secret, safe='')}"
    return {"authorization": "Basic " + base64.b64encode(raw.encode()).decode()}


def decode(jwt):
    header, payload, _ = jwt.split(".")
    return json.loads(unb64u(header)), json.loads(unb64u(payload))


def verify(id_token, nonce):
    return subprocess.run(["node", f"{DIR}/verify.mjs", id_token, nonce, ISSUER, CLIENT, HERE],
                          capture_output=True, text=True, check=True).stdout.strip()


disc = get_json("/.well-known/openid-configuration")


def authorize(browser, login, password, label, pkce=True, quiet=False, expect_form=True):
    """Authorization request up to the callback redirect. Returns (callback params, verifier, nonce, state)."""
    verifier = b64u(secrets.token_bytes(32))
    state, nonce = b64u(secrets.token_bytes(16)), b64u(secrets.token_bytes(16))
    params = {"client_id": CLIENT, "redirect_uri": REDIRECT, "response_type": "code",
              "scope": "openid email profile", "state": state, "nonce": nonce}
    if pkce:
        params.update(code_challenge=b64u(hashlib.sha256(verifier.encode()).digest()),
                      code_challenge_method="S256")
    status, location, body = browser.request(disc["authorization_endpoint"] + "?" + urllib.parse.urlencode(params), quiet=quiet)
    if location.startswith(REDIRECT):
        return dict(urllib.parse.parse_qsl(urllib.parse.urlparse(location).query)), verifier, nonce, state
    if status != 303 or not location.startswith("/interaction/"):
        fail(f"{label}: authorization request answered {status} {location} {body[:200]}")
    status, _, page = browser.request(location, quiet=quiet)
    if status != 200 or 'name="password"' not in page:
        fail(f"{label}: no login form ({status})")
    action = re.search(r'<form id="login-form" method="post" action="([^"]+)"', page).group(1)
    status, location, page = browser.request(action, {"login": login, "password": password}, quiet=quiet)
    if status != 303:
        return {"login_status": status, "page": page, "action": action}, verifier, nonce, state
    status, location, _ = browser.request(location, quiet=quiet)  # /auth/UID: the resumed request
    if status != 303 or not location.startswith(REDIRECT):
        fail(f"{label}: resume answered {status} {location}")
    return dict(urllib.parse.parse_qsl(urllib.parse.urlparse(location).query)), verifier, nonce, state


def exchange(code, verifier, quiet=False):
    status, _, body = post(disc["token_endpoint"], {
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
        "code_verifier": verifier}, basic(CLIENT, CLIENT_SECRET))
    if not quiet:
        print(f"   POST /token (Basic postern:SECRET, grant_type=authorization_code, code, redirect_uri, code_verifier) -> {status}")
    return status, json.loads(body)


def sign_in(login, password, label, browser=None, quiet=False):
    browser = browser or Browser()
    callback, verifier, nonce, state = authorize(browser, login, password, label, quiet=quiet)
    if "code" not in callback:
        fail(f"{label}: no code: {callback}")
    if callback.get("state") != state:
        fail(f"{label}: state mismatch")
    status, tokens = exchange(callback["code"], verifier, quiet=quiet)
    if status != 200:
        fail(f"{label}: token endpoint {status} {tokens}")
    return tokens, nonce, browser


print("\n== discovery: GET /.well-known/openid-configuration")
for key in ("issuer", "authorization_endpoint", "token_endpoint", "jwks_uri", "userinfo_endpoint",
            "end_session_endpoint", "scopes_supported", "response_types_supported",
            "code_challenge_methods_supported", "token_endpoint_auth_methods_supported",
            "id_token_signing_alg_values_supported", "claims_supported", "acr_values_supported",
            "authorization_response_iss_parameter_supported"):
    print(f"   {key}: {disc.get(key)}")
jwks_kids = [k["kid"] for k in get_json(disc["jwks_uri"])["keys"]]
print(f"   JWKS kids: {jwks_kids}")

print("\n== alice (amr [\"pwd\"]): the whole flow, step by step")
browser = Browser()
callback, verifier, nonce, state = authorize(browser, "alice@example.test", "alice-pass-1", "alice")
print(f"   cookies the client kept: {browser.cookies()}")
print(f"   callback query: code=..., state {'matches' if callback['state'] == state else 'DIFFERS'}, iss={callback.get('iss')}")
status, tokens = exchange(callback["code"], verifier)
print(f"   token response: {sorted(tokens)} token_type={tokens['token_type']} expires_in={tokens['expires_in']}")
header, claims = decode(tokens["id_token"])
print(f"   ID token header: {header}   (kid in JWKS: {header['kid'] in jwks_kids})")
print(f"   ID token claims: {json.dumps(claims)}")
if claims["email"] != "alice@example.test" or claims["amr"] != ["pwd"] or claims["nonce"] != nonce \
        or claims["aud"] != CLIENT or claims["iss"] != ISSUER or "acr" in claims:
    fail("alice's claims")
print(f"   verified: {verify(tokens['id_token'], nonce)}")
status, _, body = Browser().request(disc["userinfo_endpoint"], headers={"authorization": f"Bearer {tokens['access_token']}"}, quiet=True)
print(f"   GET /me (userinfo) with the access token: {status} {body.strip()}")
status, again = exchange(callback["code"], verifier, quiet=True)
print(f"   the same code again: {status} {again.get('error')}")
if status != 400 or again.get("error") != "invalid_grant":
    fail("code reuse")
status, _, body = Browser().request(disc["userinfo_endpoint"], headers={"authorization": f"Bearer {tokens['access_token']}"}, quiet=True)
print(f"   userinfo again: {status} {body.strip()} (a reused code revokes what it gave)")

print("\n== bob (amr [\"pwd\",\"mfa\"], acr): claims")
tokens, nonce, _ = sign_in("bob", "bob-pass-1", "bob", quiet=True)
header, claims = decode(tokens["id_token"])
print(f"   ID token claims: {json.dumps(claims)}")
if claims["amr"] != ["pwd", "mfa"] or claims["acr"] != "urn:example:mfa" or claims["upn"] != "bob@corp.example.test":
    fail("bob's claims")
print(f"   verified: {verify(tokens['id_token'], nonce)}")
tokens, nonce, _ = sign_in("carol@example.test", "carol-pass-1", "carol", quiet=True)
print(f"   carol (no amr, acr in CONFIG): {sorted(decode(tokens['id_token'])[1])}")

print("\n== a wrong password, then the right one in the same interaction")
browser = Browser()
result, verifier, nonce, state = authorize(browser, "alice@example.test", "not-her-password", "wrong password")
error = re.search(r'<p id="error"[^>]*>([^<]*)</p>', result.get("page", ""))
print(f"   login form posted with a wrong password: {result.get('login_status')}, page says: {error and error.group(1)}")
if result.get("login_status") != 401:
    fail("wrong password accepted")
status, location, _ = browser.request(result["action"], {"login": "alice@example.test", "password": "alice-pass-1"})
status, location, _ = browser.request(location)
if not location.startswith(REDIRECT + "?code="):
    fail("retry after a wrong password")
print(f"   retried with the right one: a code for the callback")

print("\n== a disabled account (POST /__test/account?id=carol&disabled=1)")
status, _, body = post("/__test/account?id=carol&disabled=1", {})
result, *_ = authorize(Browser(), "carol", "carol-pass-1", "disabled", quiet=True)
error = re.search(r'<p id="error"[^>]*>([^<]*)</p>', result.get("page", ""))
print(f"   carol with her right password: {result.get('login_status')}, page says: {error and error.group(1)}")
if result.get("login_status") != 401:
    fail("disabled account signed in")
post("/__test/account?id=carol&disabled=0", {})

print("\n== no single sign-on by default: a second authorization in the same cookie jar asks again")
tokens, nonce, browser = sign_in("alice", "alice-pass-1", "first", quiet=True)
callback, verifier, nonce, state = authorize(browser, "bob", "bob-pass-1", "second", quiet=True)
status, tokens = exchange(callback["code"], verifier, quiet=True)
print(f"   same jar, signed in as bob: ID token sub = {decode(tokens['id_token'])[1]['sub']}")
if decode(tokens["id_token"])[1]["sub"] != "bob":
    fail("the provider session signed bob in as alice")

print("\n== PKCE is required, and checked")
callback, *_ = authorize(Browser(), "alice", "alice-pass-1", "no pkce", pkce=False)
print(f"   without code_challenge: callback gets error={callback.get('error')} ({callback.get('error_description')})")
if callback.get("error") != "invalid_request":
    fail("PKCE not required")
callback, verifier, nonce, state = authorize(Browser(), "alice", "alice-pass-1", "bad verifier", quiet=True)
status, answer = exchange(callback["code"], b64u(secrets.token_bytes(32)), quiet=True)
print(f"   another code_verifier at the token endpoint: {status} {answer.get('error')} ({answer.get('error_description')})")
if answer.get("error") != "invalid_grant":
    fail("wrong code_verifier accepted")
status, _, body = post(disc["token_endpoint"], {"grant_type": "authorization_code", "code": "x",
                       "redirect_uri": REDIRECT, "code_verifier": verifier}, basic(CLIENT, "wrong-secret"))
print(f"   a wrong client secret: {status} {json.loads(body).get('error')}")

print("\n== cancel on the login page (POST /interaction/UID/abort)")
browser = Browser()
status, location, _ = browser.request(disc["authorization_endpoint"] + "?" + urllib.parse.urlencode({
    "client_id": CLIENT, "redirect_uri": REDIRECT, "response_type": "code", "scope": "openid email profile",
    "state": "s1", "nonce": "n1", "code_challenge": b64u(hashlib.sha256(b"v" * 43).digest()),
    "code_challenge_method": "S256"}), quiet=True)
uid = location.rsplit("/", 1)[1]
browser.request(location, quiet=True)
status, location, _ = browser.request(f"/interaction/{uid}/abort", {})
status, location, _ = browser.request(location)
print(f"   callback query: {dict(urllib.parse.parse_qsl(urllib.parse.urlparse(location).query))}")

print("\n== key rotation (POST /__test/rotate-keys)")
status, _, body = post("/__test/rotate-keys", {})
print(f"   {body.strip()}")
print(f"   JWKS kids now: {[k['kid'] for k in get_json(disc['jwks_uri'])['keys']]}")
tokens, nonce, _ = sign_in("alice", "alice-pass-1", "after rotation", quiet=True)
kid = decode(tokens["id_token"])[0]["kid"]
print(f"   a new ID token's kid: {kid}; verified: {verify(tokens['id_token'], nonce)}")
if kid != json.loads(body)["id_token_kid"]:
    fail("rotation: old key still signs")
status, _, body = post("/__test/rotate-keys?kid=third&keep_old=0", {})
print(f"   keep_old=0: {body.strip()}; JWKS kids now: {[k['kid'] for k in get_json(disc['jwks_uri'])['keys']]}")
print(f"   the ID token from before, verified now: {verify(tokens['id_token'], nonce)}")

print("\n== broken ID tokens (POST /__test/id-token?mode=...): what the verification says")
for mode in ("bad_signature", "wrong_nonce", "no_nonce", "wrong_aud", "wrong_iss", "expired",
             "unknown_kid", "foreign_key", "alg_none"):
    post(f"/__test/id-token?mode={mode}", {})
    tokens, nonce, _ = sign_in("alice", "alice-pass-1", mode, quiet=True)
    result = verify(tokens["id_token"], nonce)
    print(f"   {mode:14} {result}")
    if not result.startswith("refused"):
        fail(f"{mode} passed verification")
tokens, nonce, _ = sign_in("alice", "alice-pass-1", "after the breaks", quiet=True)
print(f"   {'(next one)':14} {verify(tokens['id_token'], nonce)}")

print("\n== sign-out (RP-initiated logout at end_session_endpoint)")
tokens, nonce, browser = sign_in("alice", "alice-pass-1", "logout", quiet=True)
status, location, page = browser.request(disc["end_session_endpoint"] + "?" + urllib.parse.urlencode({
    "id_token_hint": tokens["id_token"], "post_logout_redirect_uri": f"https://127.0.0.1:{PORTAL_PORT}/",
    "state": "bye"}))
action = re.search(r'action="([^"]+)"', page).group(1)
xsrf = re.search(r'name="xsrf" value="([^"]+)"', page).group(1)
status, location, _ = browser.request(action, {"xsrf": xsrf, "logout": "yes"})
print(f"   confirmed: back to {location}")

print("\n== the XOAUTH2 side still works next to it")
status, _, body = post("/token", {"grant_type": "client_credentials", "client_id": "m365-app",
                                  "client_secret": APP_SECRET, "scope": "https://outlook.office365.com/.default"})
header, claims = decode(json.loads(body)["access_token"])
print(f"   client_credentials: {status}, access token kid {header['kid']} (unchanged by rotation), aud {claims['aud']}")
print(f"   GET /__test/count: {json.dumps(get_json('/__test/count'))}")
logins = get_json("/__test/logins")
print(f"   GET /__test/logins: {len(logins)} posts, refused: {[(l['login'], l['reason']) for l in logins if not l['ok']]}")
print("\nall OIDC checks passed")
EOF
python3 "$DIR/flow.py" "$ISSUER" "$DIR/ca.pem" "$CLIENT_SECRET" "$PORTAL_PORT" "$APP_SECRET" "$DIR" "$HERE"

kill "$PROVIDER_PID"
wait "$PROVIDER_PID" || true
PROVIDER_PID=
echo "== provider stopped"
