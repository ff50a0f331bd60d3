#!/usr/bin/env bash
# By-hand proof of the private OpenLDAP that postern's directory tests start (README.md):
# a slapd (Debian 12's 2.5) from a generated slapd.conf in a temp dir, on two free loopback
# ports (ldap:// with StartTLS, ldaps://), with the people of both presets loaded from the
# LDIF files here, then everything postern does against it, with ldapsearch / ldapwhoami:
# the service account's searches, binds as people, TLS both ways, the disabled marks of
# both presets, filter escaping, and people deleted, disabled and re-enabled while it runs.
#
#   bash tests/ldap/try-by-hand.sh      (needs slapd, ldap-utils, openssl, python3;
#                                        root or not: nothing here needs privileges)
#
# Everything runs on 127.0.0.1 in a temp dir that is removed at the end, with the slapd it
# started. Exits non-zero at the first check that fails.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
SLAPD=/usr/sbin/slapd
for tool in "$SLAPD" ldapsearch ldapwhoami ldapadd ldapmodify ldapdelete slappasswd openssl python3; do
  command -v "$tool" >/dev/null || {
    echo "missing $tool: apt-get install --no-install-recommends slapd ldap-utils" >&2
    exit 2
  }
done

DIR=$(mktemp -d /tmp/postern-ldap-XXXXXX)
SLAPD_PID=
cleanup() {
  set +e
  if [ -n "$SLAPD_PID" ] && kill -0 "$SLAPD_PID" 2>/dev/null; then
    kill -CONT "$SLAPD_PID" # in case a check stopped it
    kill -TERM "$SLAPD_PID"
    wait "$SLAPD_PID"
  fi
  rm -rf "$DIR"
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }
ok() { printf '   ok: %s\n' "$*"; }
fail() {
  printf 'FAIL: %s\n' "$*" >&2
  [ -f "$DIR/out" ] && sed 's/^/   | /' "$DIR/out" >&2
  exit 1
}
# rc COMMAND...: runs it with its output in $DIR/out, prints its exit status
rc() {
  set +e
  "$@" >"$DIR/out" 2>&1
  local status=$?
  set -e
  echo "$status"
}
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# ---- what the harness generates: TLS files, passwords, ports -----------------------------
step "test CA and the server certificate (EC P-256, PKCS#8, chain file: like TestCa)"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$DIR/ca-key.pem"
openssl req -x509 -new -key "$DIR/ca-key.pem" -subj "/CN=postern test CA" -days 2 \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out "$DIR/ca.pem"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$DIR/ldap-key.pem"
openssl req -new -key "$DIR/ldap-key.pem" -subj "/CN=ldap" -out "$DIR/ldap.csr"
printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "extendedKeyUsage=serverAuth" \
  "keyUsage=critical,digitalSignature" >"$DIR/leaf.ext"
openssl x509 -req -in "$DIR/ldap.csr" -CA "$DIR/ca.pem" -CAkey "$DIR/ca-key.pem" \
  -CAcreateserial -days 2 -extfile "$DIR/leaf.ext" -out "$DIR/leaf.pem" 2>/dev/null
cat "$DIR/leaf.pem" "$DIR/ca.pem" >"$DIR/ldap.pem"
chmod 600 "$DIR/ldap-key.pem"
# A second CA that signed nothing here: trusting it instead must fail.
openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout "$DIR/other-ca-key.pem" -subj "/CN=some other CA" -days 2 -out "$DIR/other-ca.pem" 2>/dev/null
ok "$DIR/ca.pem, $DIR/ldap.pem (leaf + CA), $DIR/ldap-key.pem"

# Test passwords this script defines (the harness makes random ones).
ADMIN_PW=admin-pass-1
SERVICE_PW=service-pass-1
ALICE_PW=alice-pass-1
CAROL_PW=carol-pass-1
DAVE_PW=dave-pass-1
ERIN_PW=erin-pass-1
BOB_PW=bob-pass-1
DAN_PW=dan-pass-1
PORT=$(free_port)
TLS_PORT=$(free_port)
while [ "$TLS_PORT" = "$PORT" ]; do TLS_PORT=$(free_port); done

# fill FILE: the template with every @NAME@ replaced (values here contain no | & \)
fill() {
  sed -e "s|@DIR@|$DIR|g" \
    -e "s|@AD_LITE_SCHEMA@|$HERE/ad-lite.schema|g" \
    -e "s|@TLS_CA@|$DIR/ca.pem|g" \
    -e "s|@TLS_CERT@|$DIR/ldap.pem|g" \
    -e "s|@TLS_KEY@|$DIR/ldap-key.pem|g" \
    -e "s|@ADMIN_PASSWORD@|$(slappasswd -s "$ADMIN_PW")|g" \
    -e "s|@SERVICE_PASSWORD@|$(slappasswd -s "$SERVICE_PW")|g" \
    -e "s|@ALICE_PASSWORD@|$(slappasswd -s "$ALICE_PW")|g" \
    -e "s|@CAROL_PASSWORD@|$CAROL_PW|g" \
    -e "s|@DAVE_PASSWORD@|$DAVE_PW|g" \
    -e "s|@ERIN_PASSWORD@|$ERIN_PW|g" \
    -e "s|@BOB_PASSWORD@|$(slappasswd -s "$BOB_PW")|g" \
    -e "s|@DAN_PASSWORD@|$DAN_PW|g" \
    "$1"
}

# ---- slapd ----------------------------------------------------------------------------------
step "slapd.conf from slapd.conf.in, checked by slaptest"
mkdir "$DIR/db"
fill "$HERE/slapd.conf.in" >"$DIR/slapd.conf"
if grep -n '@[A-Z_]*@' "$DIR/slapd.conf"; then fail "placeholders left in slapd.conf"; fi
[ "$(rc /usr/sbin/slaptest -u -f "$DIR/slapd.conf")" = 0 ] || fail "slaptest"
ok "config file testing succeeded"

step "start slapd on ldap://127.0.0.1:$PORT/ and ldaps://127.0.0.1:$TLS_PORT/"
echo "   $SLAPD -f $DIR/slapd.conf -h \"ldap://127.0.0.1:$PORT/ ldaps://127.0.0.1:$TLS_PORT/\" -d stats"
"$SLAPD" -f "$DIR/slapd.conf" -h "ldap://127.0.0.1:$PORT/ ldaps://127.0.0.1:$TLS_PORT/" \
  -d stats 2>"$DIR/slapd.log" &
SLAPD_PID=$!
# Ready when slapd logs "slapd starting" (after it has bound its listeners); it exits
# instead if the config is wrong or a port is taken ("bind(...) failed errno=98").
for _ in $(seq 200); do
  grep -q 'slapd starting' "$DIR/slapd.log" && break
  kill -0 "$SLAPD_PID" 2>/dev/null || { cat "$DIR/slapd.log" >&2; fail "slapd exited"; }
  sleep 0.05
done
grep -q 'slapd starting' "$DIR/slapd.log" || fail "slapd not ready after 10 s"
[ "$(rc ldapwhoami -x -H "ldap://127.0.0.1:$PORT")" = 0 ] || fail "anonymous whoami"
ok "pid $SLAPD_PID, \"slapd starting\" logged, anonymous whoami: $(cat "$DIR/out")"

URL=ldap://127.0.0.1:$PORT
TLS_URL=ldaps://127.0.0.1:$TLS_PORT
BASE=ou=people,dc=example,dc=test
ADMIN=cn=admin,dc=example,dc=test
SERVICE=cn=postern,ou=services,dc=example,dc=test
# The CA the tools trust: only ours, and a verified name (127.0.0.1 is an IP SAN).
export LDAPTLS_CACERT=$DIR/ca.pem LDAPTLS_REQCERT=demand
admin() { "$@" -x -H "$URL" -D "$ADMIN" -w "$ADMIN_PW"; }
# search FILTER [ATTRS...]: the service account's search under ou=people
search() { ldapsearch -x -H "$URL" -D "$SERVICE" -w "$SERVICE_PW" -LLL -o ldif-wrap=no -b "$BASE" "$@"; }
# dns FILTER: the DNs the service account finds, one per line
dns() { search "$1" 1.1 | sed -n 's/^dn: //p'; }

step "load base.ldif, service.ldif, people-openldap.ldif, people-ad.ldif as $ADMIN"
for f in base service people-openldap people-ad; do
  fill "$HERE/$f.ldif" >"$DIR/$f.ldif"
  [ "$(rc admin ldapadd -f "$DIR/$f.ldif")" = 0 ] || fail "ldapadd $f.ldif"
  ok "$f.ldif: $(grep -c '^adding new entry' "$DIR/out") entries"
done

# ---- searches -------------------------------------------------------------------------------
step "service account: openldap preset, (&(objectClass=inetOrgPerson)(uid=alice))"
search '(&(objectClass=inetOrgPerson)(uid=alice))' uid mail cn | tee "$DIR/out"
grep -q '^dn: uid=alice,ou=people,dc=example,dc=test$' "$DIR/out" || fail "alice not found"
ok "found"
step "service account: openldap preset by mail, dave's three addresses"
search '(&(objectClass=inetOrgPerson)(mail=dave.lister@example.test))' mail | tee "$DIR/out"
[ "$(grep -c '^mail: ' "$DIR/out")" = 3 ] || fail "dave's mail values"
ok "3 mail values"

step "service account: active-directory preset, (&(objectClass=user)(|(sAMAccountName=bob)(userPrincipalName=bob@example.test)))"
search '(&(objectClass=user)(|(sAMAccountName=bob)(userPrincipalName=bob@example.test)))' \
  sAMAccountName userPrincipalName mail proxyAddresses userAccountControl | tee "$DIR/out"
BOB_DN=$(sed -n 's/^dn: //p' "$DIR/out")
[ "$BOB_DN" = 'cn=Builder\2C Bob (IT),ou=people,dc=example,dc=test' ] || fail "bob's DN: $BOB_DN"
[ "$(grep -c '^proxyAddresses: ' "$DIR/out")" = 5 ] || fail "bob's proxyAddresses"
ok "bob's DN comes back as $BOB_DN (slapd escapes the comma as \\2C)"
[ "$(dns '(&(objectClass=user)(|(sAMAccountName=bob@example.test)(userPrincipalName=bob@example.test)))')" = "$BOB_DN" ] ||
  fail "bob by UPN"
ok "the same filter with the UPN as login finds him too"
[ "$(dns '(&(objectClass=user)(proxyAddresses=smtp:ROBERT@example.test))')" = "$BOB_DN" ] || fail "proxyAddresses"
ok "(proxyAddresses=smtp:ROBERT@example.test) matches SMTP-prefixed values case-insensitively, as in AD"
[ -z "$(dns '(&(objectClass=inetOrgPerson)(uid=bob))')" ] && [ -z "$(dns '(&(objectClass=user)(uid=alice))')" ] ||
  fail "presets overlap"
ok "(objectClass=user) and (objectClass=inetOrgPerson) keep the presets' people apart"

step "anonymous cannot read people; the service account cannot read passwords"
[ "$(rc ldapsearch -x -H "$URL" -LLL -b "$BASE" '(uid=alice)')" = 32 ] || fail "anonymous search"
ok "anonymous search: $(head -1 "$DIR/out")"
[ -z "$(search '(uid=alice)' userPassword | grep -i '^userPassword')" ] || fail "userPassword readable"
ok "userPassword not returned to the service account"
[ "$(rc ldapsearch -x -H "$URL" -LLL -D "uid=alice,$BASE" -w "$ALICE_PW" -b "uid=alice,$BASE" -s base mail)" = 0 ] &&
  grep -q '^mail: alice@example.test' "$DIR/out" || fail "alice cannot read her entry"
ok "alice, bound as herself, reads her own entry"
[ "$(rc ldapsearch -x -H "$URL" -LLL -D "uid=alice,$BASE" -w "$ALICE_PW" -b "$BASE" '(uid=dave)' 1.1)" = 32 ] ||
  fail "alice sees dave"
ok "alice searching ou=people: $(head -1 "$DIR/out") (a person reads only their own entry)"

# ---- binds ----------------------------------------------------------------------------------
step "people bind as themselves (DN from the search), right and wrong password"
[ "$(rc ldapwhoami -x -H "$URL" -D "uid=alice,$BASE" -w "$ALICE_PW")" = 0 ] || fail "alice bind"
ok "alice, right password: $(cat "$DIR/out")"
[ "$(rc ldapwhoami -x -H "$URL" -D "uid=alice,$BASE" -w wrong-password)" = 49 ] || fail "alice wrong password"
ok "alice, wrong password: $(head -1 "$DIR/out")"
[ "$(rc ldapwhoami -x -H "$URL" -D "$BOB_DN" -w "$BOB_PW")" = 0 ] || fail "bob bind"
ok "bob by the DN the search returned: $(cat "$DIR/out")"
[ "$(rc ldapwhoami -x -H "$URL" -D "uid=alice,$BASE" -w '')" = 53 ] || fail "empty password"
ok "alice, EMPTY password: refused ($(head -1 "$DIR/out")); an unauthenticated bind, not a success"
for i in 1 2 3 4 5 6; do rc ldapwhoami -x -H "$URL" -D "uid=alice,$BASE" -w "wrong-$i" >/dev/null; done
[ "$(rc ldapwhoami -x -H "$URL" -D "uid=alice,$BASE" -w "$ALICE_PW")" = 0 ] || fail "alice locked out"
ok "six wrong passwords lock no one out (pwdMaxFailure 0)"

# ---- TLS ------------------------------------------------------------------------------------
step "StartTLS (-ZZ) and LDAPS, trusting the test CA only"
[ "$(rc ldapwhoami -x -ZZ -H "$URL" -D "$SERVICE" -w "$SERVICE_PW")" = 0 ] || fail "StartTLS"
ok "ldap:// + StartTLS: $(cat "$DIR/out")"
[ "$(rc ldapwhoami -x -H "$TLS_URL" -D "$SERVICE" -w "$SERVICE_PW")" = 0 ] || fail "LDAPS"
ok "ldaps://: $(cat "$DIR/out")"
[ "$(LDAPTLS_CACERT=$DIR/other-ca.pem rc ldapwhoami -x -H "$TLS_URL" -D "$SERVICE" -w "$SERVICE_PW")" != 0 ] ||
  fail "LDAPS with the wrong CA"
ok "ldaps:// trusting another CA: refused ($(head -1 "$DIR/out"))"
[ "$(LDAPTLS_CACERT=$DIR/other-ca.pem rc ldapwhoami -x -ZZ -H "$URL" -D "$SERVICE" -w "$SERVICE_PW")" != 0 ] ||
  fail "StartTLS with the wrong CA"
ok "StartTLS trusting another CA: refused ($(head -1 "$DIR/out"))"
grep -E 'TLS established|STARTTLS' "$DIR/slapd.log" | tail -3 | sed 's/^/   slapd: /'

# ---- disabled accounts ----------------------------------------------------------------------
step "active-directory preset: userAccountControl bit 0x2 with AD's bit-AND rule 1.2.840.113556.1.4.803"
echo "   disabled: (&(objectClass=user)(userAccountControl:1.2.840.113556.1.4.803:=2)) ->" \
  "$(dns '(&(objectClass=user)(userAccountControl:1.2.840.113556.1.4.803:=2))' | tr '\n' ' ')"
echo "   enabled:  (&(objectClass=user)(!(userAccountControl:1.2.840.113556.1.4.803:=2))) ->" \
  "$(dns '(&(objectClass=user)(!(userAccountControl:1.2.840.113556.1.4.803:=2)))' | tr '\n' ' ')"
[ "$(dns '(&(objectClass=user)(userAccountControl:1.2.840.113556.1.4.803:=2))')" = 'cn=Smith\2C Dan,ou=people,dc=example,dc=test' ] ||
  fail "disabled filter"
[ -z "$(dns '(&(objectClass=user)(sAMAccountName=dan)(!(userAccountControl:1.2.840.113556.1.4.803:=2)))')" ] ||
  fail "dan passes the enabled filter"
ok "dan (66050 = 0x10202) is disabled, bob (66048 = 0x10200) is not: the bit, not the value"
[ "$(rc ldapwhoami -x -H "$URL" -D 'cn=Smith\2C Dan,ou=people,dc=example,dc=test' -w "$DAN_PW")" = 49 ] ||
  fail "disabled dan could bind"
ok "dan's bind with his right password: $(head -1 "$DIR/out") (like AD's 49 / data 533)"
search '(sAMAccountName=dan)' userAccountControl | grep '^userAccountControl' | sed 's/^/   /'

step "openldap preset: pwdAccountLockedTime (ppolicy overlay)"
search '(pwdAccountLockedTime=*)' pwdAccountLockedTime | tee "$DIR/out.locked"
[ "$(sed -n 's/^dn: //p' "$DIR/out.locked")" = "uid=carol,$BASE" ] || fail "locked filter"
[ -z "$(dns '(&(objectClass=inetOrgPerson)(uid=carol)(!(pwdAccountLockedTime=*)))')" ] || fail "carol passes the enabled filter"
ok "carol is locked (an operational attribute: ask for it by name, or '+')"
[ "$(dns '(pwdAccountLockedTime=000001010000Z)')" = "uid=carol,$BASE" ] || fail "permanent-lock filter"
ok "(pwdAccountLockedTime=000001010000Z) tells an administrator's lock from a temporary lockout"
[ "$(rc ldapwhoami -x -H "$URL" -D "uid=carol,$BASE" -w "$CAROL_PW")" = 49 ] || fail "locked carol could bind"
ok "carol's bind with her right password: $(head -1 "$DIR/out")"

# ---- filter escaping ------------------------------------------------------------------------
step "filter escaping (RFC 4515): erin's uid is erin*(it)"
[ "$(dns '(&(objectClass=inetOrgPerson)(uid=erin\2a\28it\29))')" = "uid=erin*(it),$BASE" ] || fail "escaped erin"
ok '(uid=erin\2a\28it\29) finds exactly her'
[ "$(rc search '(&(objectClass=inetOrgPerson)(uid=erin*(it)))' 1.1)" != 0 ] || fail "unescaped filter accepted"
ok "unescaped, (uid=erin*(it)) is refused: $(head -1 "$DIR/out")"
echo "   login \"*\" unescaped, (uid=*): $(dns '(&(objectClass=inetOrgPerson)(uid=*))' | wc -l) people;" \
  "escaped, (uid=\\2a): $(dns '(&(objectClass=inetOrgPerson)(uid=\2a))' | wc -l)"
[ -z "$(dns '(&(objectClass=inetOrgPerson)(uid=\2a))')" ] || fail "escaped star matched"
[ "$(rc ldapwhoami -x -H "$URL" -D "uid=erin*(it),$BASE" -w "$ERIN_PW")" = 0 ] || fail "erin bind"
ok "erin binds with her DN as returned: $(cat "$DIR/out")"

# ---- the directory changes while postern runs ----------------------------------------------
step "changes are visible at once: delete alice, disable bob, re-enable dan and carol"
[ "$(rc admin ldapdelete "uid=alice,$BASE")" = 0 ] || fail "delete alice"
[ -z "$(dns '(uid=alice)')" ] || fail "alice still found"
ok "alice deleted: (uid=alice) finds nothing"
[ "$(rc ldapwhoami -x -H "$URL" -D "uid=alice,$BASE" -w "$ALICE_PW")" = 49 ] || fail "deleted alice could bind"
ok "alice's bind: $(head -1 "$DIR/out")"

printf 'dn: %s\nchangetype: modify\nreplace: userAccountControl\nuserAccountControl: 66050\n' "$BOB_DN" >"$DIR/bob-off.ldif"
[ "$(rc admin ldapmodify -f "$DIR/bob-off.ldif")" = 0 ] || fail "disable bob"
[ "$(rc ldapwhoami -x -H "$URL" -D "$BOB_DN" -w "$BOB_PW")" = 49 ] || fail "disabled bob could bind"
ok "bob disabled (66050): his bind is refused at once"

printf 'dn: cn=Smith\\2C Dan,%s\nchangetype: modify\nreplace: userAccountControl\nuserAccountControl: 512\n' "$BASE" >"$DIR/dan-on.ldif"
[ "$(rc admin ldapmodify -f "$DIR/dan-on.ldif")" = 0 ] || fail "enable dan"
[ -n "$(dns '(&(objectClass=user)(sAMAccountName=dan)(!(userAccountControl:1.2.840.113556.1.4.803:=2)))')" ] || fail "dan not enabled"
[ "$(rc ldapwhoami -x -H "$URL" -D 'cn=Smith\, Dan,ou=people,dc=example,dc=test' -w "$DAN_PW")" = 0 ] || fail "dan bind"
ok "dan re-enabled (512): in the enabled filter and binds: $(cat "$DIR/out")"

printf 'dn: uid=carol,%s\nchangetype: modify\ndelete: pwdAccountLockedTime\n' "$BASE" >"$DIR/carol-on.ldif"
[ "$(rc admin ldapmodify -f "$DIR/carol-on.ldif")" = 0 ] || fail "unlock carol"
[ "$(rc ldapwhoami -x -H "$URL" -D "uid=carol,$BASE" -w "$CAROL_PW")" = 0 ] || fail "carol bind"
ok "carol unlocked (pwdAccountLockedTime deleted): binds: $(cat "$DIR/out")"
printf 'dn: uid=carol,%s\nchangetype: modify\nreplace: pwdAccountLockedTime\npwdAccountLockedTime: 000001010000Z\n' "$BASE" >"$DIR/carol-off.ldif"
[ "$(rc admin ldapmodify -f "$DIR/carol-off.ldif")" = 0 ] || fail "lock carol"
[ "$(rc ldapwhoami -x -H "$URL" -D "uid=carol,$BASE" -w "$CAROL_PW")" = 49 ] || fail "relocked carol could bind"
ok "carol locked again (000001010000Z): bind refused"

# ---- a directory that hangs -----------------------------------------------------------------
step "SIGSTOP: connections are accepted (by the kernel) but never answered; SIGCONT resumes"
kill -STOP "$SLAPD_PID"
[ "$(rc timeout 2 ldapwhoami -x -H "$URL" -D "$SERVICE" -w "$SERVICE_PW")" = 124 ] || fail "stopped slapd answered"
ok "a bind gets no answer within 2 s (the client's timeout must fire)"
kill -CONT "$SLAPD_PID"
[ "$(rc ldapwhoami -x -H "$URL" -D "$SERVICE" -w "$SERVICE_PW")" = 0 ] || fail "after SIGCONT"
ok "after SIGCONT: $(cat "$DIR/out")"

# ---- stop -----------------------------------------------------------------------------------
step "stop: SIGTERM, and the port refuses connections"
kill -TERM "$SLAPD_PID"
wait "$SLAPD_PID" && status=0 || status=$?
SLAPD_PID=
[ "$status" = 0 ] || fail "slapd exit status $status"
grep -q 'slapd stopped' "$DIR/slapd.log" || fail "no 'slapd stopped' in the log"
ok "slapd exited 0 ($(grep -o 'slapd stopped.*' "$DIR/slapd.log"))"
[ "$(rc ldapwhoami -x -H "$URL" -D "$SERVICE" -w "$SERVICE_PW")" = 255 ] || fail "still answering"
ok "a client now gets: $(head -1 "$DIR/out") (exit 255): the \"directory down\" case"

printf '\nall LDAP checks passed\n'
