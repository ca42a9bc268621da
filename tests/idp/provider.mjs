// A real OAuth 2.1 authorization server for the test suite: npm oidc-provider (the
// certified OpenID provider) configured from one JSON file, argv[2]:
//
//   { "port": 8123, "issuer": "http://127.0.0.1:8123",
//     "jwks": { "keys": [private JWKs, each with kid, alg and use "sig"] },
//     "clients": [{ "client_id", "client_secret", "grant_types": [...], "scope" }],
//     "resources": { "<resource URL>": { "scope": "mcp:tools mcp:read",
//        "accessTokenFormat": "jwt" | "opaque", "jwt_alg": "RS256" | "ES256" | "EdDSA" | "Ed25519",
//        "accessTokenTTL": seconds } },
//     "token_exchange": true | false }
//
// What it serves, over plain http on 127.0.0.1:
// - client_credentials with an RFC 8707 `resource`: an access token (JWT or opaque, per
//   resource) with iss, aud (the resource), sub and client_id (the client), scope, iat, exp.
//   The signing key is the first key of the resource's alg in "jwks" (the newest, after
//   a rotation).
// - RFC 7662 introspection (client_secret_basic or _post) of opaque tokens and, which
//   oidc-provider itself refuses, of the JWTs it issued (verified against its own keys).
// - RFC 7009 revocation of opaque tokens.
// - RFC 8414 metadata at /.well-known/oauth-authorization-server and OpenID discovery at
//   /.well-known/openid-configuration; the public keys at jwks_uri.
// - With "token_exchange": RFC 8693 token exchange (subject_token_type access_token) for
//   clients whose grant_types include it: a JWT for the requested resource/audience (a
//   configured resource) whose sub is the subject token's, with client_id and act.sub the
//   exchanging client.
// It prints one line, "listening <issuer>", once it accepts connections.

import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import * as querystring from 'node:querystring';
import { pathToFileURL } from 'node:url';

const NODE_MODULES = new URL('../node/node_modules/', import.meta.url);
const OIDC_PACKAGE = new URL('oidc-provider/package.json', NODE_MODULES);
const { default: Provider, errors } = await import(new URL('oidc-provider/lib/index.js', NODE_MODULES));
// jose is oidc-provider's own JOSE library: resolve it the way oidc-provider does.
const jose = await import(pathToFileURL(createRequire(OIDC_PACKAGE).resolve('jose')));

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
const JWT_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:jwt';
const INTROSPECTION_PATH = '/token/introspection';
const DEFAULT_TTL = 600;

const cfg = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const resources = cfg.resources ?? {};
const publicKeys = {
  keys: cfg.jwks.keys.map(({ d, p, q, dp, dq, qi, ...pub }) => pub),
};
const localJwks = jose.createLocalJWKSet(publicKeys);

function resourceServerInfo(identifier, { forceJwt = false } = {}) {
  const resource = resources[identifier];
  if (!resource) {
    throw new errors.InvalidTarget(`unknown resource ${identifier}`);
  }
  const format = forceJwt ? 'jwt' : (resource.accessTokenFormat ?? 'jwt');
  return {
    audience: identifier,
    scope: resource.scope ?? '',
    accessTokenTTL: resource.accessTokenTTL ?? DEFAULT_TTL,
    accessTokenFormat: format,
    ...(format === 'jwt' ? { jwt: { sign: { alg: resource.jwt_alg ?? 'RS256' } } } : {}),
  };
}

// Every scope any resource or client names is a "static" scope, so a client asking for
// one its registration does not list is refused (invalid_scope).
const scopes = new Set(['openid']);
for (const resource of Object.values(resources)) {
  for (const scope of (resource.scope ?? '').split(' ')) if (scope) scopes.add(scope);
}
for (const client of cfg.clients) {
  for (const scope of (client.scope ?? '').split(' ')) if (scope) scopes.add(scope);
}

const provider = new Provider(cfg.issuer, {
  clients: cfg.clients.map((client) => ({
    client_id: client.client_id,
    client_secret: client.client_secret,
    grant_types: client.grant_types ?? ['client_credentials'],
    scope: client.scope,
    redirect_uris: [],
    response_types: [],
    token_endpoint_auth_method: client.token_endpoint_auth_method ?? 'client_secret_basic',
  })),
  jwks: cfg.jwks,
  scopes: [...scopes],
  ttl: {
    ClientCredentials: (ctx, token) => token.resourceServer?.accessTokenTTL ?? DEFAULT_TTL,
  },
  cookies: { keys: [crypto.randomUUID()] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: {
      enabled: true,
      // Any authenticated confidential client (a resource server) may introspect.
      allowedPolicy: (ctx, client) => client.clientAuthMethod !== 'none',
    },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => undefined,
      useGrantedResource: () => false,
      getResourceServerInfo: (ctx, identifier) => resourceServerInfo(identifier),
    },
  },
  // A client_credentials token is the client's own: its sub is the client id (oidc-provider
  // puts that in JWTs, this puts it in introspection answers too). An exchanged token's sub
  // is the subject token's, and act names the exchanging client.
  extraTokenClaims(ctx, token) {
    if (token.exchange) {
      return { sub: token.exchange.sub, act: token.exchange.act };
    }
    if (token.kind === 'ClientCredentials') {
      return { sub: token.clientId };
    }
    return undefined;
  },
  formats: {
    customizers: {
      jwt(ctx, token, jwt) {
        if (token.exchange) {
          jwt.payload.sub = token.exchange.sub;
        }
      },
    },
  },
});

provider.on('server_error', (ctx, error) => console.error('server_error', error));

// --- JWT introspection -------------------------------------------------------------------
// oidc-provider answers unsupported_token_type for a JWT. Hand it a stand-in token that
// exists nowhere, so it still authenticates the client and answers {"active": false};
// then answer for the JWT itself.
function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function looksLikeJwt(value) {
  try {
    return typeof value === 'string' && !!jose.decodeProtectedHeader(value);
  } catch {
    return false;
  }
}

async function verifyOwnJwt(value) {
  try {
    const { payload } = await jose.jwtVerify(value, localJwks, { issuer: cfg.issuer });
    return payload;
  } catch {
    return undefined;
  }
}

provider.use(async (ctx, next) => {
  if (ctx.method !== 'POST' || ctx.path !== INTROSPECTION_PATH || !ctx.is('application/x-www-form-urlencoded')) {
    return next();
  }
  const raw = await readBody(ctx.req);
  const params = querystring.parse(raw);
  const jwt = looksLikeJwt(params.token) ? params.token : undefined;
  if (jwt) {
    params.token = `jwt-standin-${crypto.randomUUID()}`;
  }
  ctx.request.body = querystring.stringify(params);
  await next();
  if (jwt && ctx.status === 200 && ctx.body?.active === false) {
    const payload = await verifyOwnJwt(jwt);
    if (payload) {
      ctx.body = { ...payload, active: true, token_type: 'Bearer' };
    }
  }
});

// --- RFC 8693 token exchange ---------------------------------------------------------------
async function subjectClaims(value) {
  if (looksLikeJwt(value)) {
    return verifyOwnJwt(value);
  }
  const token = await provider.ClientCredentials.find(value);
  if (!token?.isValid) {
    return undefined;
  }
  return {
    sub: token.extra?.sub ?? token.clientId,
    scope: token.scope,
    client_id: token.clientId,
    aud: token.aud,
  };
}

async function tokenExchange(ctx) {
  const { params, client } = ctx.oidc;
  for (const name of ['subject_token', 'subject_token_type']) {
    if (!params[name]) {
      throw new errors.InvalidRequest(`missing required parameter '${name}'`);
    }
  }
  if (![ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE].includes(params.subject_token_type)) {
    throw new errors.InvalidRequest('unsupported subject_token_type');
  }
  if (params.requested_token_type && params.requested_token_type !== ACCESS_TOKEN_TYPE) {
    throw new errors.InvalidRequest('unsupported requested_token_type');
  }
  const subject = await subjectClaims(params.subject_token);
  if (!subject?.sub) {
    throw new errors.InvalidGrant('subject_token is invalid, expired or not issued here');
  }
  const target = params.resource ?? params.audience;
  if (!target) {
    throw new errors.InvalidTarget('a resource or an audience is required');
  }
  const info = resourceServerInfo(target, { forceJwt: true });

  const held = new Set((subject.scope ?? '').split(' ').filter(Boolean));
  let requested = held;
  if (params.scope) {
    requested = new Set(params.scope.split(' ').filter(Boolean));
    for (const scope of requested) {
      if (!held.has(scope)) {
        throw new errors.InvalidScope('requested scope exceeds the subject token', scope);
      }
    }
  }
  const offered = new Set(info.scope.split(' '));
  const scope = [...requested].filter((s) => offered.has(s)).join(' ') || undefined;

  const token = new provider.ClientCredentials({ client, scope });
  token.resourceServer = new provider.ResourceServer(target, info);
  token.exchange = { sub: subject.sub, act: { sub: client.clientId } };
  ctx.oidc.entity('ClientCredentials', token);
  const value = await token.save();

  ctx.body = {
    access_token: value,
    issued_token_type: ACCESS_TOKEN_TYPE,
    token_type: 'Bearer',
    expires_in: token.expiration,
    ...(scope ? { scope } : {}),
  };
}

if (cfg.token_exchange) {
  provider.registerGrantType(
    TOKEN_EXCHANGE,
    tokenExchange,
    ['subject_token', 'subject_token_type', 'actor_token', 'actor_token_type',
      'requested_token_type', 'audience', 'resource', 'scope'],
  );
}

const server = provider.listen(cfg.port, '127.0.0.1', () => {
  console.log(`listening ${cfg.issuer}`);
});

function shutdown() {
  server.close(() => process.exit(0));
  server.closeAllConnections?.();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
