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
// ---------------------------------------------------------------------------------------

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import * as path from 'node:path';

import * as jose from 'jose';
import Provider, { errors } from 'oidc-provider';

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
    userinfo: { enabled: false },
    resourceIndicators: {
      enabled: true,
      async defaultResource(ctx, client) {
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
};
let counts;
let recent;
function resetCounts() {
  counts = {
    total: 0, ok: 0, error: 0, grants: {},
  };
  recent = [];
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
    default:
      sendJson(res, 404, { error: `no test hook ${route}` });
      return;
  }
  sendJson(res, 200, {
    fail_status: hooks.failStatus || null,
    fail_times: Number.isFinite(hooks.failTimes) ? hooks.failTimes : null,
    delay_ms: hooks.delayMs,
    token_ttl_seconds: tokenTtl,
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
    if (chunk) answer += chunk.toString();
    return originalEnd.call(this, chunk, ...rest);
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
  else {
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
process.stdout.write(`ready ${actualPort}\n`);

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close();
    server.closeAllConnections?.();
    process.exit(0);
  });
}
