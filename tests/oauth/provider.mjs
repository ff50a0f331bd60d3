// postern's test identity provider: a real OAuth 2.0 authorization server (oidc-provider)
// that issues the tokens postern fetches for XOAUTH2 / OAUTHBEARER upstream logins.
//
//   node tests/oauth/provider.mjs CONFIG.json
//
// Prints exactly one line, `ready PORT`, to stdout once it accepts connections; everything
// else (oidc-provider's notices included) goes to stderr. See README.md for CONFIG.
//
// Grants on POST /token (token endpoint; discovery at /.well-known/openid-configuration,
// public keys at /jwks):
//   - client_credentials (Microsoft 365 style, one app token for the tenant), client
//     authentication client_secret_post, client_secret_basic or private_key_jwt (RS256).
//   - urn:ietf:params:oauth:grant-type:jwt-bearer (RFC 7523, Google service accounts): the
//     assertion is checked here (RS256 signature by the service account's key, iss = the
//     client, aud = issuer or token URL, iat/exp, lifetime <= 1 h); no client
//     authentication (the client is the assertion's iss); the token's sub = the
//     assertion's sub (the user to act as).
// Access tokens are JWTs signed RS256 by the provider's key (header typ "JWT", kid), with
// claims jti, sub, iat, exp, scope, client_id, iss, aud: what Dovecot's oauth2 passdb
// validates locally (see dovecot-oauth2.md).
//
// OpenID Connect sign-in (only with "oidc_clients" and "accounts" in CONFIG): the
// authorization code flow with PKCE (S256, required), state and nonce, for confidential web
// clients; scopes openid, email, profile; GET /auth, POST /token, GET /jwks, GET /me
// (userinfo), GET /session/end (RP-initiated logout). The login is this file's own form
// (GET /interaction/UID, POST /interaction/UID/login with "login" and "password"), checked
// against CONFIG's accounts; consent is implied (no consent page). ID tokens carry sub,
// email, email_verified, name, amr (and acr) of the account, nonce, at_hash, auth_time.
// CONFIG "sso": false (default) makes every authorization ask for the password.
//
// ---------------------------------------------------------------------------------------
// TEST HOOKS (test only, same port, under /__test/; never part of a real provider):
//   GET  /__test/health                 200 "ok"
//   POST /__test/fail?status=503[&error=temporarily_unavailable][&times=N][&body=html]
//        the token endpoint answers that status (JSON {"error":...}, or an HTML page with
//        body=html) for the next N token requests (default: until /__test/ok)
//   POST /__test/delay?ms=N             token responses wait N ms first (0 = no delay)
//   POST /__test/ok                     clears fail and delay
//   POST /__test/ttl?seconds=N          lifetime of tokens issued from now on
//   GET  /__test/count                  {"total","ok","error","grants":{GRANT:{"total","ok","error"}}}
//                                       token requests answered (injected failures included)
//   GET  /__test/requests               the last 100 token requests: grant_type, client_id,
//                                       client_auth, scope, subject, status, error (no secrets)
//   POST /__test/reset                  clears hooks, counters and the request list
//   POST /__test/mint?sub=U[&scope=S][&aud=A][&client_id=C][&exp_in=SECONDS][&iat_in=SECONDS]
//        [&iss=ISS][&key=foreign][&kid=KID]
//        a token signed like the real ones without a token request (not counted): exp_in<0
//        gives an expired token, key=foreign a bad signature under the real kid, kid=... an
//        unknown key id. Answers {"access_token": ...}.
//   POST /__test/rotate-keys[?kid=KID][&keep_old=0]
//        a new RSA key signs the ID tokens issued from now on; /jwks lists it first, then
//        the older ones (keep_old=0: only the new one). Access tokens keep their key.
//   POST /__test/id-token?mode=MODE[&times=N]   the next N (default 1) ID tokens from the
//        token endpoint are broken: bad_signature, wrong_nonce, no_nonce, wrong_aud,
//        wrong_iss, expired, unknown_kid, foreign_key, alg_none (cleared by /__test/ok)
//   POST /__test/account?id=ID[&disabled=1|0][&password=P][&amr=pwd,mfa][&acr=A]
//        changes an account: a disabled one cannot sign in
//   GET  /__test/logins                 the last 100 login form posts: login, account, ok, reason
// ---------------------------------------------------------------------------------------

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import * as path from 'node:path';

import * as jose from 'jose';
import Provider, { errors } from 'oidc-provider';
// oidc-provider's per-instance state (keystore, published JWKS): used only by the
// /__test/rotate-keys hook. An internal module of the exactly pinned 8.8.1 (package-lock).
import instance from 'oidc-provider/lib/helpers/weak_cache.js';

// stdout carries only the `ready PORT` line: oidc-provider prints notices with console.info.
console.log = console.info = console.debug = (...args) => console.error(...args);

const JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer';
const TOKEN_PATH = '/token';
const CLOCK_TOLERANCE = 5; // seconds, for assertions' iat/exp
const MAX_ASSERTION_LIFETIME = 3600; // Google refuses assertions valid for longer

// As in real life, Microsoft 365's scope only for app tokens, Google's only for per-user
// tokens: Dovecot's app-token passdb tells an app token by its scope (dovecot-oauth2.md).
const DEFAULT_RESOURCES = [
  {
    audience: 'https://outlook.office365.com',
    scope: 'https://outlook.office365.com/.default',
    grants: ['client_credentials'],
  },
  { audience: 'https://mail.google.com/', scope: 'https://mail.google.com/', grants: ['jwt_bearer'] },
];

function die(message) {
  console.error(`provider.mjs: ${message}`);
  process.exit(2);
}

if (process.argv.length !== 3) die('usage: node provider.mjs CONFIG.json');
const configPath = process.argv[2];
let config;
try {
  config = JSON.parse(fs.readFileSync(configPath, 'utf8'));
} catch (e) {
  die(`cannot read ${configPath}: ${e.message}`);
}
const configDir = path.dirname(path.resolve(configPath));
const resolvePath = (p) => path.resolve(configDir, p);

const host = config.host || '127.0.0.1';
let tokenTtl = Number(config.token_ttl_seconds ?? 3600);
if (!Number.isInteger(tokenTtl) || tokenTtl < 1) die('token_ttl_seconds must be a positive integer');
const resources = config.resources || DEFAULT_RESOURCES;

// ----- keys --------------------------------------------------------------------------

// A public KeyObject from PEM text (public key, certificate or private key) or a Google
// service-account JSON key file's text; certificate: the X509Certificate when given one.
function publicKeyFrom(text, where) {
  try {
    const trimmed = text.trim();
    if (trimmed.startsWith('{')) {
      const json = JSON.parse(trimmed);
      if (json.kty) return { key: crypto.createPublicKey({ key: json, format: 'jwk' }) };
      if (json.private_key) return { key: crypto.createPublicKey(json.private_key) };
      throw new Error('JSON is neither a JWK nor a service-account key file');
    }
    if (trimmed.includes('BEGIN CERTIFICATE')) {
      const certificate = new crypto.X509Certificate(trimmed);
      return { key: certificate.publicKey, certificate };
    }
    return { key: crypto.createPublicKey(trimmed) };
  } catch (e) {
    die(`${where}: not a usable public key: ${e.message}`);
  }
  return undefined;
}

function clientPublicKey(c) {
  const where = `client ${c.client_id}`;
  if (c.jwk) return publicKeyFrom(JSON.stringify(c.jwk), where);
  if (c.public_key_pem) return publicKeyFrom(c.public_key_pem, where);
  if (c.public_key_file) return publicKeyFrom(fs.readFileSync(resolvePath(c.public_key_file), 'utf8'), where);
  return undefined;
}

// The provider's token-signing key (RS256).
let signingKey;
if (config.signing_key_file) {
  signingKey = crypto.createPrivateKey(fs.readFileSync(resolvePath(config.signing_key_file), 'utf8'));
} else {
  ({ privateKey: signingKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }));
}
const signingKid = config.signing_kid || 'postern-test-1';
if (/[/%]/.test(signingKid)) die('signing_kid must not contain "/" or "%"');
const signingPublic = crypto.createPublicKey(signingKey);
const signingJwk = { ...signingKey.export({ format: 'jwk' }), kid: signingKid, alg: 'RS256', use: 'sig' };
const publicJwk = { ...signingPublic.export({ format: 'jwk' }), kid: signingKid, alg: 'RS256', use: 'sig' };
const publicPem = signingPublic.export({ type: 'spki', format: 'pem' });

function writeFile(file, content) {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, content, { mode: 0o644 });
}

// Where Dovecot finds the key: fs:posix:prefix=DIR/ looks up "<azp>/<alg>/<kid>"; the
// tokens carry no azp claim, so Dovecot uses "default".
if (config.dovecot_keys_dir) {
  writeFile(path.join(resolvePath(config.dovecot_keys_dir), 'default', 'RS256', signingKid), publicPem);
}
if (config.public_key_file) writeFile(resolvePath(config.public_key_file), publicPem);
if (config.jwks_file) writeFile(resolvePath(config.jwks_file), `${JSON.stringify({ keys: [publicJwk] }, null, 2)}\n`);

// ----- clients -----------------------------------------------------------------------

const clientConfigs = new Map();
const providerClients = [];
for (const c of config.clients || []) {
  if (!c.client_id) die('a client has no client_id');
  const grant = c.grant || 'client_credentials';
  const entry = { ...c, grant };
  const meta = {
    client_id: c.client_id,
    redirect_uris: [],
    response_types: [],
  };
  if (grant === 'client_credentials') {
    const auth = c.auth || 'client_secret_post';
    meta.grant_types = ['client_credentials'];
    meta.token_endpoint_auth_method = auth;
    if (auth === 'client_secret_post' || auth === 'client_secret_basic') {
      if (!c.client_secret) die(`client ${c.client_id}: ${auth} needs client_secret`);
      meta.client_secret = c.client_secret;
    } else if (auth === 'private_key_jwt') {
      const pub = clientPublicKey(c);
      if (!pub) die(`client ${c.client_id}: private_key_jwt needs jwk, public_key_pem or public_key_file`);
      const base = { ...pub.key.export({ format: 'jwk' }), use: 'sig' };
      // A client assertion may name its key (kid) or not; accept the configured kid, and
      // for a certificate the usual thumbprint forms (Microsoft's x5t, hex SHA-1).
      const kids = new Set(c.kid ? [c.kid] : []);
      if (pub.certificate) {
        const der = pub.certificate.raw;
        const sha1 = crypto.createHash('sha1').update(der).digest();
        const sha256 = crypto.createHash('sha256').update(der).digest();
        kids.add(sha1.toString('base64url'));
        kids.add(sha1.toString('hex').toUpperCase());
        kids.add(sha1.toString('hex'));
        kids.add(sha256.toString('base64url'));
      }
      meta.jwks = { keys: [base, ...[...kids].map((kid) => ({ ...base, kid }))] };
      meta.token_endpoint_auth_signing_alg = 'RS256';
    } else {
      die(`client ${c.client_id}: unknown auth ${auth}`);
    }
  } else if (grant === 'jwt_bearer') {
    const pub = clientPublicKey(c);
    if (!pub) die(`client ${c.client_id}: jwt_bearer needs jwk, public_key_pem or public_key_file`);
    entry.publicKey = pub.key;
    // Google's token endpoint takes no client authentication: the assertion is the proof.
    meta.grant_types = [JWT_BEARER];
    meta.token_endpoint_auth_method = 'none';
  } else {
    die(`client ${c.client_id}: unknown grant ${grant}`);
  }
  clientConfigs.set(c.client_id, entry);
  providerClients.push(meta);
}

// ----- OpenID Connect clients and accounts (optional) --------------------------------

const oidcClientIds = new Set();
for (const c of config.oidc_clients || []) {
  if (!c.client_id) die('an oidc client has no client_id');
  if (clientConfigs.has(c.client_id)) die(`client ${c.client_id} is configured twice`);
  if (!c.client_secret) die(`oidc client ${c.client_id}: needs client_secret`);
  if (!Array.isArray(c.redirect_uris) || !c.redirect_uris.length) {
    die(`oidc client ${c.client_id}: needs redirect_uris`);
  }
  const auth = c.auth || 'client_secret_basic';
  if (auth !== 'client_secret_basic' && auth !== 'client_secret_post') {
    die(`oidc client ${c.client_id}: auth must be client_secret_basic or client_secret_post`);
  }
  oidcClientIds.add(c.client_id);
  clientConfigs.set(c.client_id, { ...c, grant: 'authorization_code' });
  providerClients.push({
    client_id: c.client_id,
    client_secret: c.client_secret,
    redirect_uris: c.redirect_uris,
    post_logout_redirect_uris: c.post_logout_redirect_uris || [],
    response_types: ['code'],
    grant_types: ['authorization_code'],
    token_endpoint_auth_method: auth,
    id_token_signed_response_alg: 'RS256',
  });
}
const oidcEnabled = oidcClientIds.size > 0;

const STANDARD_CLAIMS = new Set(['sub', 'email', 'email_verified', 'name', 'amr', 'acr']);
const accounts = new Map();
const accountClaimNames = new Set();
function checkAmr(amr, where) {
  if (amr !== undefined && (!Array.isArray(amr) || !amr.every((v) => typeof v === 'string' && v))) {
    die(`${where}: amr must be an array of strings`);
  }
}
for (const a of config.accounts || []) {
  if (!a.id || typeof a.id !== 'string') die('an account has no id');
  if (accounts.has(a.id)) die(`account ${a.id} is configured twice`);
  if (typeof a.password !== 'string' || !a.password) die(`account ${a.id}: needs password`);
  checkAmr(a.amr, `account ${a.id}`);
  for (const name of Object.keys(a.claims || {})) {
    if (STANDARD_CLAIMS.has(name)) die(`account ${a.id}: claims.${name} is set by the provider`);
    accountClaimNames.add(name);
  }
  accounts.set(a.id, { ...a, disabled: Boolean(a.disabled) });
}
if (oidcEnabled && !accounts.size) die('oidc_clients need accounts');
// Every authorization asks for the password unless CONFIG says "sso": true: the front
// drops the provider's session cookies from authorization requests (/auth and its resume,
// /auth/UID), so each one starts without a session (tests sign in as several people in one
// browser; oidc-provider would otherwise reuse the session, or answer a change of account
// with an auto-submitted sign-out form). The session cookie set at the end of the flow
// still serves /session/end.
const sso = Boolean(config.sso);
const SESSION_COOKIES = new Set(['_session', '_session.sig', '_session.legacy', '_session.legacy.sig']);
function dropSessionCookies(req) {
  if (!req.headers.cookie) return;
  const kept = req.headers.cookie.split(/;\s*/)
    .filter((pair) => !SESSION_COOKIES.has(pair.slice(0, pair.indexOf('=')).trim()));
  if (kept.length) req.headers.cookie = kept.join('; ');
  else delete req.headers.cookie;
}

function accountByLogin(login) {
  const wanted = String(login || '').trim().toLowerCase();
  if (!wanted) return undefined;
  return [...accounts.values()].find((a) => a.id.toLowerCase() === wanted
    || (typeof a.email === 'string' && a.email.toLowerCase() === wanted));
}

// What the ID token (and userinfo) says about an account; the scopes mask it (claims below).
function accountClaims(a) {
  const claims = { sub: a.id };
  if (a.email) {
    claims.email = a.email;
    claims.email_verified = a.email_verified ?? true;
  }
  if (a.name) claims.name = a.name;
  return { ...(a.claims || {}), ...claims };
}

// oidc-provider's settings for the sign-in flow; none of them when CONFIG has no oidc_clients.
function oidcSettings() {
  if (!oidcEnabled) return {};
  // acr is a claim only when some acr values exist (oidc-provider drops it otherwise).
  const acrValues = [...new Set([...(config.acr_values || []),
    ...[...accounts.values()].map((a) => a.acr).filter(Boolean)])];
  return {
    acrValues,
    scopes: ['openid', 'email', 'profile'],
    claims: {
      acr: null,
      amr: null,
      auth_time: null,
      sid: null,
      iss: null,
      // amr, acr, auth_time in every ID token (oidc-provider's default: only on request).
      openid: ['sub', 'amr', 'acr', 'auth_time'],
      email: ['email', 'email_verified'],
      profile: ['name', ...accountClaimNames],
    },
    // email, name... in the ID token itself, not only from userinfo.
    conformIdTokenClaims: false,
    pkce: { methods: ['S256'], required: () => true },
    interactions: {
      url: (ctx, interaction) => `/interaction/${interaction.uid}`,
    },
    async findAccount(ctx, sub) {
      const a = accounts.get(sub);
      if (!a) return undefined;
      return { accountId: sub, claims: async () => accountClaims(a) };
    },
    // Consent is implied: the first-party client gets the OIDC scopes it asked for.
    async loadExistingGrant(ctx) {
      const { client, session, result } = ctx.oidc;
      const grantId = result?.consent?.grantId || session.grantIdFor(client.clientId);
      if (grantId) {
        const existing = await ctx.oidc.provider.Grant.find(grantId);
        if (existing) return existing;
      }
      if (!session.accountId) return undefined;
      const grant = new ctx.oidc.provider.Grant({ clientId: client.clientId, accountId: session.accountId });
      grant.addOIDCScope('openid email profile');
      await grant.save();
      return grant;
    },
    ttl: {
      AccessToken: () => tokenTtl,
      ClientCredentials: () => tokenTtl,
      IdToken: () => tokenTtl,
    },
  };
}

// ----- resources (audiences) and scopes ----------------------------------------------

function resourceForScope(scopes) {
  return resources.find((r) => scopes.some((s) => r.scope.split(' ').includes(s)));
}

function clientMayUse(clientId, resource) {
  const c = clientConfigs.get(clientId);
  if (!c) return false;
  if (resource.grants && !resource.grants.includes(c.grant)) return false;
  return !c.resource || c.resource === resource.audience;
}

function resourceServerInfo(resource) {
  return {
    scope: resource.scope,
    audience: resource.audience,
    accessTokenTTL: tokenTtl,
    accessTokenFormat: 'jwt',
    jwt: { sign: { alg: 'RS256', kid: signingKid } },
  };
}

function oauthError(ErrorClass, description, ...rest) {
  const err = new ErrorClass(description, ...rest);
  err.error_description = description;
  return err;
}

// ----- the provider ------------------------------------------------------------------

const port = Number(config.port || 0);
const server = config.tls
  ? https.createServer({
    cert: fs.readFileSync(resolvePath(config.tls.cert_file)),
    key: fs.readFileSync(resolvePath(config.tls.key_file)),
  })
  : http.createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(port, host, resolve);
});
const actualPort = server.address().port;
const scheme = config.tls ? 'https' : 'http';
const issuer = config.issuer || `${scheme}://${host}:${actualPort}`;
const tokenUrl = `${scheme}://${host}:${actualPort}${TOKEN_PATH}`;

const provider = new Provider(issuer, {
  clients: providerClients,
  jwks: { keys: [signingJwk] },
  clientAuthMethods: ['client_secret_post', 'client_secret_basic', 'private_key_jwt', 'none'],
  scopes: [],
  claims: {},
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: false },
    revocation: { enabled: false },
    userinfo: { enabled: oidcEnabled },
    rpInitiatedLogout: {
      enabled: true,
      async logoutSource(ctx, form) {
        ctx.type = 'html';
        ctx.body = `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Sign out</title></head>
<body><h1>Sign out of the test identity provider?</h1>
${form}
<button autofocus type="submit" form="op.logoutForm" value="yes" name="logout">Yes, sign me out</button>
<button type="submit" form="op.logoutForm">No, stay signed in</button>
</body></html>
`;
      },
      async postLogoutSuccessSource(ctx) {
        ctx.type = 'html';
        ctx.body = '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>Signed out</title></head><body><h1>Signed out</h1></body></html>\n';
      },
    },
    resourceIndicators: {
      enabled: true,
      async defaultResource(ctx, client) {
        // Sign-in clients get an access token for userinfo (no resource), as usual.
        if (oidcClientIds.has(client.clientId)) return undefined;
        const scopes = (ctx.oidc.params.scope || '').split(' ').filter(Boolean);
        const resource = resourceForScope(scopes);
        if (!resource || !clientMayUse(client.clientId, resource)) {
          throw oauthError(errors.InvalidScope, `scope "${ctx.oidc.params.scope || ''}" is unknown or not for this client`, ctx.oidc.params.scope);
        }
        return resource.audience;
      },
      async getResourceServerInfo(ctx, indicator, client) {
        const resource = resources.find((r) => r.audience === indicator);
        if (!resource || !clientMayUse(client.clientId, resource)) {
          throw oauthError(errors.InvalidTarget, `resource ${indicator} is not for this client`);
        }
        const allowed = clientConfigs.get(client.clientId)?.scope;
        const requested = (ctx.oidc.params.scope || '').split(' ').filter(Boolean);
        const refused = allowed && requested.find((s) => !allowed.split(' ').includes(s));
        if (refused) throw oauthError(errors.InvalidScope, `scope ${refused} is not allowed for this client`, refused);
        return resourceServerInfo(resource);
      },
      useGrantedResource: async () => true,
    },
  },
  ttl: {
    AccessToken: () => tokenTtl,
    ClientCredentials: () => tokenTtl,
  },
  formats: {
    customizers: {
      // Dovecot 2.3.19 accepts only typ "JWT" (oauth2-jwt.c), not RFC 9068's "at+jwt".
      async jwt(ctx, token, jwt) {
        jwt.header = { typ: 'JWT' };
      },
    },
  },
  clockTolerance: CLOCK_TOLERANCE,
  cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
  renderError(ctx, out) {
    ctx.type = 'json';
    ctx.body = out;
  },
  ...oidcSettings(),
});

// RFC 7523 JWT bearer grant, as Google's service accounts use it.
async function jwtBearerGrant(ctx, next) {
  const { client, params } = ctx.oidc;
  const c = clientConfigs.get(client.clientId);
  if (!c || c.grant !== 'jwt_bearer') {
    throw oauthError(errors.UnauthorizedClient, 'client is not a service account');
  }
  let payload;
  try {
    ({ payload } = await jose.jwtVerify(params.assertion, c.publicKey, {
      algorithms: ['RS256'],
      issuer: client.clientId,
      audience: [tokenUrl, issuer, ...(config.extra_assertion_audiences || [])],
      requiredClaims: ['iat', 'exp'],
      clockTolerance: CLOCK_TOLERANCE,
    }));
  } catch (e) {
    throw oauthError(errors.InvalidGrant, `invalid assertion: ${e.message}`);
  }
  const now = Math.floor(Date.now() / 1000);
  if (payload.iat > now + CLOCK_TOLERANCE) throw oauthError(errors.InvalidGrant, 'invalid assertion: iat in the future');
  if (payload.exp - payload.iat > MAX_ASSERTION_LIFETIME) {
    throw oauthError(errors.InvalidGrant, 'invalid assertion: valid for more than 1 hour');
  }
  const sub = payload.sub || client.clientId;
  if (c.subjects && !c.subjects.includes(sub)) {
    throw oauthError(errors.InvalidGrant, `invalid assertion: may not act as ${sub}`);
  }
  // Google takes the scope from the assertion; the form's scope is a fallback.
  const scopeText = typeof payload.scope === 'string' ? payload.scope : (params.scope || '');
  const requested = [...new Set(scopeText.split(' ').filter(Boolean))];
  const resource = resourceForScope(requested);
  if (!resource || !clientMayUse(client.clientId, resource)) {
    throw oauthError(errors.InvalidScope, `scope "${scopeText}" is unknown or not for this client`, scopeText);
  }
  const allowed = new Set(resource.scope.split(' '));
  if (c.scope) {
    const clientAllowed = new Set(c.scope.split(' '));
    for (const s of [...allowed]) if (!clientAllowed.has(s)) allowed.delete(s);
  }
  const scope = requested.filter((s) => allowed.has(s)).join(' ');
  if (!scope) throw oauthError(errors.InvalidScope, `scope "${scopeText}" not allowed`, scopeText);

  const { AccessToken, ResourceServer } = ctx.oidc.provider;
  const token = new AccessToken({
    accountId: sub,
    client,
    scope,
    gty: 'jwt_bearer',
    resourceServer: new ResourceServer(resource.audience, resourceServerInfo(resource)),
  });
  ctx.oidc.entity('AccessToken', token);
  const value = await token.save();
  ctx.body = {
    access_token: value,
    expires_in: token.expiration,
    token_type: 'Bearer',
    scope,
  };
  await next();
}
provider.registerGrantType(JWT_BEARER, jwtBearerGrant, ['assertion', 'scope']);

provider.on('grant.error', (ctx, err) => {
  console.error(`token error: ${err.error || err.message}: ${err.error_description || ''} ${err.error_detail || ''}`);
});
provider.on('server_error', (ctx, err) => console.error('server_error', err));

// ----- test hooks and the HTTP front -------------------------------------------------

const hooks = {
  failStatus: 0, failError: '', failTimes: Infinity, failHtml: false, delayMs: 0,
  idTokenMode: null, idTokenTimes: 0,
};
let counts;
let recent;
let recentLogins;
function resetCounts() {
  counts = {
    total: 0, ok: 0, error: 0, grants: {},
  };
  recent = [];
  recentLogins = [];
}
resetCounts();

function clearFail() {
  Object.assign(hooks, {
    failStatus: 0, failError: '', failTimes: Infinity, failHtml: false,
  });
}

function clearHooks() {
  clearFail();
  hooks.delayMs = 0;
  hooks.idTokenMode = null;
  hooks.idTokenTimes = 0;
}

// ----- ID token keys: rotation, and broken ID tokens on demand ------------------------

// Newest first: idTokenKeys[0] signs the ID tokens. publishedKids: what /jwks lists.
const idTokenKeys = [{ kid: signingKid, privateKey: signingKey, publicJwk }];
let publishedKids = [signingKid];
let rotations = 0;

function rotateKeys(q) {
  rotations += 1;
  const kid = q.get('kid') || `${signingKid}-rotated-${rotations}`;
  if (/[/%]/.test(kid)) throw new Error('kid must not contain "/" or "%"');
  if (idTokenKeys.some((k) => k.kid === kid)) throw new Error(`kid ${kid} is taken`);
  const state = instance(provider);
  const { keystore } = state;
  if (!keystore || typeof keystore.clear !== 'function' || typeof keystore.add !== 'function'
    || !state.jwksResponse) {
    throw new Error('oidc-provider internals are not the expected ones (keystore, jwksResponse)');
  }
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = { ...privateKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' };
  const pub = { ...crypto.createPublicKey(privateKey).export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' };
  // oidc-provider signs ID tokens with the first RS256 key of its keystore; access tokens
  // name theirs (signing_kid), so they keep the original key.
  const older = [...keystore];
  keystore.clear();
  keystore.add(jwk);
  older.forEach((k) => keystore.add(k));
  idTokenKeys.unshift({ kid, privateKey, publicJwk: pub });
  const keepOld = q.get('keep_old') !== '0';
  publishedKids = keepOld ? [kid, ...publishedKids] : [kid];
  state.jwksResponse = {
    keys: publishedKids.map((k) => idTokenKeys.find((key) => key.kid === k).publicJwk),
  };
  console.error(`rotated keys: ID tokens now signed by ${kid}; /jwks lists ${publishedKids.join(', ')}`);
  return { id_token_kid: kid, jwks_kids: publishedKids, access_token_kid: signingKid };
}

const ID_TOKEN_BREAKS = new Set(['bad_signature', 'wrong_nonce', 'no_nonce', 'wrong_aud', 'wrong_iss',
  'expired', 'unknown_kid', 'foreign_key', 'alg_none']);

function signJwtRs256(header, payload, key) {
  const input = `${Buffer.from(JSON.stringify(header)).toString('base64url')}.${Buffer.from(JSON.stringify(payload)).toString('base64url')}`;
  return `${input}.${crypto.sign('sha256', Buffer.from(input), key).toString('base64url')}`;
}

// The ID token as the provider issued it, broken the way `mode` says.
function breakIdToken(idToken, mode) {
  const [h, p, signature] = idToken.split('.');
  const header = JSON.parse(Buffer.from(h, 'base64url').toString('utf8'));
  const payload = JSON.parse(Buffer.from(p, 'base64url').toString('utf8'));
  const key = idTokenKeys[0].privateKey;
  const now = Math.floor(Date.now() / 1000);
  const resign = (changes) => signJwtRs256(header, { ...payload, ...changes }, key);
  switch (mode) {
    case 'bad_signature': { // another email under the original signature
      const changed = { ...payload, email: 'mallory@example.test' };
      return `${h}.${Buffer.from(JSON.stringify(changed)).toString('base64url')}.${signature}`;
    }
    case 'wrong_nonce': return resign({ nonce: crypto.randomBytes(16).toString('base64url') });
    case 'no_nonce': {
      const { nonce, ...rest } = payload;
      return signJwtRs256(header, rest, key);
    }
    case 'wrong_aud': return resign({ aud: 'some-other-client' });
    case 'wrong_iss': return resign({ iss: 'https://idp.attacker.example' });
    case 'expired': return resign({ iat: now - 7200, exp: now - 3600 });
    case 'unknown_kid': return signJwtRs256({ ...header, kid: 'no-such-key' }, payload, key);
    case 'foreign_key': {
      const { privateKey: foreign } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
      return signJwtRs256(header, payload, foreign);
    }
    case 'alg_none': {
      const none = Buffer.from(JSON.stringify({ alg: 'none', typ: 'JWT' })).toString('base64url');
      return `${none}.${p}.`;
    }
    default: throw new Error(`unknown mode ${mode}`);
  }
}

// ----- the sign-in pages (GET /interaction/UID, POST /interaction/UID/login) ----------

function htmlEscape(text) {
  return String(text ?? '').replace(/[&<>"']/g, (c) => ({
    '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
  }[c]));
}

function sendHtml(res, status, html) {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(html);
}

function loginPage(uid, { login = '', error = '', clientId = '' } = {}) {
  return `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Sign in: postern test identity provider</title></head>
<body>
<h1>Sign in</h1>
<p>to continue to <span id="client">${htmlEscape(clientId)}</span></p>
${error ? `<p id="error" role="alert">${htmlEscape(error)}</p>\n` : ''}<form id="login-form" method="post" action="/interaction/${htmlEscape(uid)}/login">
<label>Email or user name <input type="text" name="login" id="login" value="${htmlEscape(login)}" autocomplete="username" autofocus required></label>
<label>Password <input type="password" name="password" id="password" autocomplete="current-password" required></label>
<button type="submit" id="sign-in">Sign in</button>
</form>
<form id="abort-form" method="post" action="/interaction/${htmlEscape(uid)}/abort">
<button type="submit" id="cancel">Cancel</button>
</form>
</body></html>
`;
}

function passwordMatches(expected, given) {
  const a = crypto.createHash('sha256').update(String(expected)).digest();
  const b = crypto.createHash('sha256').update(String(given)).digest();
  return crypto.timingSafeEqual(a, b);
}

function recordLogin(entry) {
  recentLogins.push(entry);
  if (recentLogins.length > 100) recentLogins.shift();
  console.error(`login: ${JSON.stringify(entry)}`);
}

// A consent prompt should not happen (loadExistingGrant grants); if it does, grant it.
async function finishConsent(req, res, details) {
  const { prompt: { details: missing }, params, session } = details;
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes || {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  const grantId = await grant.save();
  await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
}

async function interaction(req, res, url) {
  const match = url.pathname.match(/^\/interaction\/([^/]+)(?:\/(login|abort))?$/);
  if (!match) {
    sendHtml(res, 404, '<!DOCTYPE html>\n<h1>Not found</h1>\n');
    return;
  }
  const [, uid, action] = match;
  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (e) {
    // No or foreign interaction cookie, or the interaction expired.
    sendHtml(res, 400, `<!DOCTYPE html>\n<h1>Sign-in expired or unknown</h1>\n<p>${htmlEscape(e.message)}</p>\n`);
    return;
  }
  if (details.uid !== uid) {
    sendHtml(res, 400, '<!DOCTYPE html>\n<h1>Sign-in expired or unknown</h1>\n');
    return;
  }
  const clientId = details.params.client_id;
  if (req.method === 'GET' && !action) {
    if (details.prompt.name === 'login') {
      sendHtml(res, 200, loginPage(uid, { login: details.params.login_hint, clientId }));
    } else {
      await finishConsent(req, res, details);
    }
    return;
  }
  if (req.method === 'POST' && action === 'login') {
    const form = new URLSearchParams(await readBody(req));
    const login = form.get('login') || '';
    const account = accountByLogin(login);
    let reason = null;
    if (!account || !passwordMatches(account.password, form.get('password') || '')) reason = 'wrong login or password';
    else if (account.disabled) reason = 'account disabled';
    recordLogin({
      login, account: reason ? null : account.id, ok: !reason, reason, client_id: clientId,
    });
    if (reason) {
      const error = reason === 'account disabled' ? 'This account is disabled.' : 'Wrong email or password.';
      sendHtml(res, 401, loginPage(uid, { login, error, clientId }));
      return;
    }
    const result = { accountId: account.id, remember: sso };
    if (account.amr) result.amr = account.amr;
    if (account.acr) result.acr = account.acr;
    await provider.interactionFinished(req, res, { login: result }, { mergeWithLastSubmission: false });
    return;
  }
  if (req.method === 'POST' && action === 'abort') {
    await provider.interactionFinished(req, res, {
      error: 'access_denied', error_description: 'End-User aborted interaction',
    }, { mergeWithLastSubmission: false });
    return;
  }
  sendHtml(res, 405, '<!DOCTYPE html>\n<h1>Method not allowed</h1>\n');
}

function sendJson(res, status, body, headers = {}) {
  const text = `${JSON.stringify(body)}\n`;
  res.writeHead(status, {
    'content-type': 'application/json', 'cache-control': 'no-store', ...headers,
  });
  res.end(text);
}

function readBody(req, limit = 64 * 1024) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > limit) {
        reject(new Error('body too large'));
        req.destroy();
      } else {
        chunks.push(chunk);
      }
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function unverifiedClaims(jwt) {
  try {
    return jose.decodeJwt(jwt);
  } catch {
    return {};
  }
}

function sleep(ms) {
  return new Promise((resolve) => { setTimeout(resolve, ms); });
}

async function mint(q) {
  const now = Math.floor(Date.now() / 1000);
  const scopeParam = q.get('scope') || resources[0].scope;
  const resource = resourceForScope(scopeParam.split(' ')) || resources[0];
  const clientId = q.get('client_id') || [...clientConfigs.keys()][0] || 'test-client';
  const claims = {
    jti: crypto.randomBytes(16).toString('base64url'),
    sub: q.get('sub') || clientId,
    iat: now + Number(q.get('iat_in') || 0),
    exp: now + Number(q.get('exp_in') ?? tokenTtl),
    scope: scopeParam,
    client_id: clientId,
    iss: q.get('iss') || issuer,
    aud: q.get('aud') || resource.audience,
  };
  let key = signingKey;
  if (q.get('key') === 'foreign') {
    ({ privateKey: key } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }));
  }
  return new jose.SignJWT(claims)
    .setProtectedHeader({ alg: 'RS256', typ: 'JWT', kid: q.get('kid') || signingKid })
    .sign(key);
}

async function admin(req, res, url) {
  const q = url.searchParams;
  const route = `${req.method} ${url.pathname}`;
  switch (route) {
    case 'GET /__test/health':
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end('ok\n');
      return;
    case 'POST /__test/fail': {
      const status = Number(q.get('status') || 503);
      if (!Number.isInteger(status) || status < 400 || status > 599) {
        sendJson(res, 400, { error: 'status must be 400..599' });
        return;
      }
      hooks.failStatus = status;
      hooks.failError = q.get('error') || (status >= 500 ? 'temporarily_unavailable' : 'invalid_request');
      hooks.failTimes = q.has('times') ? Number(q.get('times')) : Infinity;
      hooks.failHtml = q.get('body') === 'html';
      break;
    }
    case 'POST /__test/delay':
      hooks.delayMs = Math.max(0, Number(q.get('ms') || 0));
      break;
    case 'POST /__test/ok':
      clearHooks();
      break;
    case 'POST /__test/ttl': {
      const seconds = Number(q.get('seconds'));
      if (!Number.isInteger(seconds) || seconds < 1) {
        sendJson(res, 400, { error: 'seconds must be a positive integer' });
        return;
      }
      tokenTtl = seconds;
      break;
    }
    case 'POST /__test/reset':
      clearHooks();
      resetCounts();
      break;
    case 'GET /__test/count':
      sendJson(res, 200, counts);
      return;
    case 'GET /__test/requests':
      sendJson(res, 200, recent);
      return;
    case 'POST /__test/mint':
      sendJson(res, 200, { access_token: await mint(q), token_type: 'Bearer' });
      return;
    case 'POST /__test/rotate-keys':
      try {
        sendJson(res, 200, rotateKeys(q));
      } catch (e) {
        sendJson(res, 400, { error: e.message });
      }
      return;
    case 'POST /__test/id-token': {
      const mode = q.get('mode');
      const times = q.has('times') ? Number(q.get('times')) : 1;
      if (!ID_TOKEN_BREAKS.has(mode) || !Number.isInteger(times) || times < 1) {
        sendJson(res, 400, { error: `mode must be one of ${[...ID_TOKEN_BREAKS].join(', ')}; times a positive integer` });
        return;
      }
      hooks.idTokenMode = mode;
      hooks.idTokenTimes = times;
      break;
    }
    case 'POST /__test/account': {
      const a = accounts.get(q.get('id') || '');
      if (!a) {
        sendJson(res, 404, { error: `no account ${q.get('id')}` });
        return;
      }
      if (q.has('disabled')) a.disabled = q.get('disabled') === '1' || q.get('disabled') === 'true';
      if (q.get('password')) a.password = q.get('password');
      if (q.has('amr')) a.amr = q.get('amr') ? q.get('amr').split(',') : undefined;
      if (q.has('acr')) a.acr = q.get('acr') || undefined;
      sendJson(res, 200, {
        id: a.id, email: a.email ?? null, disabled: a.disabled, amr: a.amr ?? null, acr: a.acr ?? null,
      });
      return;
    }
    case 'GET /__test/logins':
      sendJson(res, 200, recentLogins);
      return;
    default:
      sendJson(res, 404, { error: `no test hook ${route}` });
      return;
  }
  sendJson(res, 200, {
    fail_status: hooks.failStatus || null,
    fail_times: Number.isFinite(hooks.failTimes) ? hooks.failTimes : null,
    delay_ms: hooks.delayMs,
    token_ttl_seconds: tokenTtl,
    id_token_break: hooks.idTokenMode,
    id_token_break_times: hooks.idTokenMode ? hooks.idTokenTimes : null,
  });
}

// A token request: test hooks first, then oidc-provider.
async function tokenRequest(req, res, app) {
  let body = await readBody(req);
  const params = new URLSearchParams(body);
  const grant = params.get('grant_type') || '(none)';
  let clientAuth = 'none';
  if (req.headers.authorization?.toLowerCase().startsWith('basic ')) clientAuth = 'client_secret_basic';
  else if (params.has('client_assertion')) clientAuth = 'private_key_jwt';
  else if (params.has('client_secret')) clientAuth = 'client_secret_post';
  const assertion = params.get('assertion');
  const claims = assertion ? unverifiedClaims(assertion) : {};
  let clientId = params.get('client_id');
  if (!clientId && clientAuth === 'client_secret_basic') {
    try {
      const decoded = Buffer.from(req.headers.authorization.slice(6), 'base64').toString('utf8');
      clientId = decodeURIComponent(decoded.slice(0, decoded.indexOf(':')));
    } catch { /* left unknown */ }
  }
  if (!clientId && clientAuth === 'private_key_jwt') clientId = unverifiedClaims(params.get('client_assertion')).sub;
  // Google's jwt-bearer request names no client: the assertion's iss is the client.
  if (grant === JWT_BEARER && clientAuth === 'none' && !clientId && typeof claims.iss === 'string') {
    clientId = claims.iss;
    params.set('client_id', clientId);
    body = params.toString();
  }
  const record = {
    grant_type: grant,
    client_id: clientId || null,
    client_auth: clientAuth,
    scope: params.get('scope') ?? (typeof claims.scope === 'string' ? claims.scope : null),
    subject: claims.sub ?? null,
    status: null,
    error: null,
  };
  const originalEnd = res.end;
  let answer = '';
  res.end = function end(chunk, ...rest) {
    let out = chunk;
    // /__test/id-token: break the ID token of a successful code exchange.
    if (chunk && hooks.idTokenMode && hooks.idTokenTimes > 0 && res.statusCode === 200
      && grant === 'authorization_code' && !res.headersSent) {
      try {
        const answerBody = JSON.parse(chunk.toString());
        if (typeof answerBody.id_token === 'string') {
          const mode = hooks.idTokenMode;
          answerBody.id_token = breakIdToken(answerBody.id_token, mode);
          hooks.idTokenTimes -= 1;
          if (hooks.idTokenTimes === 0) hooks.idTokenMode = null;
          out = JSON.stringify(answerBody);
          res.setHeader('content-length', Buffer.byteLength(out));
          console.error(`token request: ID token broken (${mode}) by /__test/id-token`);
        }
      } catch (e) {
        console.error(`could not break the ID token: ${e.stack || e}`);
      }
    }
    if (out) answer += out.toString();
    return originalEnd.call(this, out, ...rest);
  };
  res.on('finish', () => {
    record.status = res.statusCode;
    if (res.statusCode !== 200) {
      try {
        record.error = JSON.parse(answer).error || 'non-json';
      } catch {
        record.error = 'non-json';
      }
    }
    const g = counts.grants[grant] || { total: 0, ok: 0, error: 0 };
    counts.grants[grant] = g;
    const outcome = res.statusCode === 200 ? 'ok' : 'error';
    counts.total += 1;
    counts[outcome] += 1;
    g.total += 1;
    g[outcome] += 1;
    recent.push(record);
    if (recent.length > 100) recent.shift();
    console.error(`token request: ${JSON.stringify(record)}`);
  });

  if (hooks.delayMs > 0) await sleep(hooks.delayMs);
  if (hooks.failStatus && hooks.failTimes > 0) {
    const { failStatus: status, failError: error, failHtml: html } = hooks;
    hooks.failTimes -= 1;
    if (hooks.failTimes === 0) clearFail();
    if (html) {
      res.writeHead(status, { 'content-type': 'text/html' });
      res.end(`<html><body><h1>${status}</h1>injected by /__test/fail</body></html>\n`);
    } else {
      sendJson(res, status, { error, error_description: 'injected by /__test/fail' });
    }
    return;
  }
  // oidc-provider reads an already-consumed body from req.body.
  req.body = body;
  app(req, res);
}

const app = provider.callback();
server.on('request', (req, res) => {
  const url = new URL(req.url, 'http://localhost');
  let handled;
  if (url.pathname.startsWith('/__test/')) handled = admin(req, res, url);
  else if (url.pathname === TOKEN_PATH && req.method === 'POST') handled = tokenRequest(req, res, app);
  else if (oidcEnabled && url.pathname.startsWith('/interaction/')) handled = interaction(req, res, url);
  else {
    if (oidcEnabled && !sso && (url.pathname === '/auth' || url.pathname.startsWith('/auth/'))) {
      dropSessionCookies(req);
    }
    app(req, res);
    return;
  }
  handled.catch((e) => {
    console.error(`request failed: ${e.stack || e}`);
    if (!res.headersSent) sendJson(res, 500, { error: 'server_error' });
    else res.destroy();
  });
});

console.error(`provider: issuer ${issuer}, token endpoint ${tokenUrl}, signing kid ${signingKid}, token ttl ${tokenTtl}s`);
if (oidcEnabled) {
  console.error(`provider: OpenID Connect sign-in for ${[...oidcClientIds].join(', ')}; ${accounts.size} accounts; sso ${sso}`);
}
process.stdout.write(`ready ${actualPort}\n`);

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close();
    server.closeAllConnections?.();
    process.exit(0);
  });
}
