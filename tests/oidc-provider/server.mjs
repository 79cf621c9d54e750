// A real OpenID provider (node-oidc-provider) for the browser tests, over HTTPS on loopback.
// Settings come from the environment the test sets; it prints "listening <port>" once ready.
//
// Users log in on the provider's development login page with any password; their claims
// are those in USERS below (e-mail, Keycloak-style realm roles, groups). The client
// `dsf-fhir` uses the authorization code flow (PKCE required) and back-channel logout, and
// may get JWT access tokens for the resource `urn:dsf:fhir` with client credentials.

import https from 'node:https';
import fs from 'node:fs';
import Provider from 'oidc-provider';

const env = (name) => {
  const value = process.env[name];
  if (!value) {
    console.error(`${name} is not set`);
    process.exit(2);
  }
  return value;
};

const port = Number(env('OIDC_PORT'));
const issuer = `https://localhost:${port}`;
const clientId = env('OIDC_CLIENT_ID');
const clientSecret = env('OIDC_CLIENT_SECRET');
const redirectUri = env('OIDC_REDIRECT_URI');
const backChannelLogoutUri = env('OIDC_BACK_CHANNEL_LOGOUT_URI');
const postLogoutRedirectUri = env('OIDC_POST_LOGOUT_REDIRECT_URI');

const USERS = {
  alice: { email: 'alice@local.test', name: 'Alice Admin', realm_access: { roles: ['dsf-admin'] }, groups: [] },
  bob: { email: 'bob@local.test', name: 'Bob Reader', realm_access: { roles: [] }, groups: ['/readers'] },
};

const provider = new Provider(issuer, {
  clients: [{
    client_id: clientId,
    client_secret: clientSecret,
    redirect_uris: [redirectUri],
    post_logout_redirect_uris: [postLogoutRedirectUri],
    grant_types: ['authorization_code', 'client_credentials'],
    response_types: ['code'],
    backchannel_logout_uri: backChannelLogoutUri,
    backchannel_logout_session_required: true,
  }],
  pkce: { required: () => true },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'realm_access', 'groups'],
  },
  // The ID token carries the profile claims, as Keycloak's does.
  conformIdTokenClaims: false,
  features: {
    devInteractions: { enabled: true },
    backchannelLogout: { enabled: true },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => undefined,
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: 'api',
        audience: clientId,
        accessTokenFormat: 'jwt',
      }),
    },
  },
  extraTokenClaims: async (ctx, token) => (token.kind === 'ClientCredentials'
    ? { email: 'api-client@local.test', realm_access: { roles: ['dsf-api'] } }
    : undefined),
  findAccount: async (ctx, sub) => {
    const user = USERS[sub];
    if (!user) return undefined;
    return { accountId: sub, claims: async () => ({ sub, email_verified: true, ...user }) };
  },
  cookies: { keys: ['dsf-rs browser test provider'] },
  // The provider guards its outgoing calls against loopback addresses; here the FHIR server
  // it sends back-channel logouts to is on loopback by design.
  fetch: (url, options) => {
    const { dispatcher, ...rest } = options;
    return fetch(url, rest);
  },
});
provider.proxy = false;
provider.on('backchannel.error', (ctx, error, client) => {
  console.error(`back-channel logout to ${client.clientId} failed: ${error} ${error.cause}`);
});
provider.on('backchannel.success', (ctx, client) => {
  console.error(`back-channel logout to ${client.clientId} sent`);
});
provider.on('server_error', (ctx, error) => console.error(`provider error: ${error}`));

const server = https.createServer({
  key: fs.readFileSync(env('OIDC_TLS_KEY')),
  cert: fs.readFileSync(env('OIDC_TLS_CERT')),
}, provider.callback());
server.listen(port, '127.0.0.1', () => {
  console.log(`listening ${port}`);
});
