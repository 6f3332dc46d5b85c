// A real OpenID Provider (the `oidc-provider` package) for the console's
// single sign-on tests. Usage: node provider.mjs PORT REDIRECT_URI
// Every login name is an account `NAME` with email NAME@example.com
// (verified), except names starting with "unverified", whose email is not.
// The ID token carries a `groups` claim (see GROUPS).
import Provider from "oidc-provider";

const [port, redirect] = process.argv.slice(2);
const issuer = `http://127.0.0.1:${port}`;
const GROUPS = { bob: ["security"], dave: ["security", "data-owners"] };

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: "airlock",
      client_secret: "airlock-test-secret",
      redirect_uris: [redirect],
      grant_types: ["authorization_code"],
      response_types: ["code"],
      token_endpoint_auth_method: "client_secret_basic",
    },
  ],
  pkce: { methods: ["S256"], required: () => true },
  claims: { openid: ["sub", "groups"], email: ["email", "email_verified"] },
  // Scope claims in the ID token itself, as many providers do.
  conformIdTokenClaims: false,
  async findAccount(ctx, id) {
    return {
      accountId: id,
      async claims() {
        return {
          sub: id,
          email: `${id}@example.com`,
          email_verified: !id.startsWith("unverified"),
          groups: GROUPS[id] || [],
        };
      },
    };
  },
  cookies: { keys: ["airlock-test-only"] },
  features: { devInteractions: { enabled: true } },
});

provider.listen(Number(port), "127.0.0.1", () => {
  console.log(`ready ${issuer}`);
});
