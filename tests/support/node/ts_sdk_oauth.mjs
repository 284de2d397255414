// The TypeScript SDK's MCP client (what Claude Desktop, MCP Inspector and mcp-remote build on),
// signing in with its own OAuth code: it discovers the authorization server from the 401,
// registers, and "opens the browser" by printing the authorization URL as a JSON line; the test
// drives the browser and answers with the URL the browser landed on. Then it lists the tools.
//   node ts_sdk_oauth.mjs SDK_DIR SERVER_URL REDIRECT_URL
import readline from "node:readline";
import { pathToFileURL } from "node:url";

const [sdk, serverUrl, redirectUrl] = process.argv.slice(2);
const load = (path) => import(pathToFileURL(`${sdk}/dist/esm/${path}`).href);
const { Client } = await load("client/index.js");
const { StreamableHTTPClientTransport } = await load("client/streamableHttp.js");
const { UnauthorizedError } = await load("client/auth.js");

const kept = {};
const provider = {
  get redirectUrl() { return redirectUrl; },
  get clientMetadata() {
    return { client_name: "TypeScript SDK test", redirect_uris: [redirectUrl],
             grant_types: ["authorization_code", "refresh_token"], response_types: ["code"],
             token_endpoint_auth_method: "none" };
  },
  clientInformation() { return kept.client; },
  saveClientInformation(client) { kept.client = client; },
  tokens() { return kept.tokens; },
  saveTokens(tokens) { kept.tokens = tokens; },
  redirectToAuthorization(url) { console.log(JSON.stringify({ authorize: url.toString() })); },
  saveCodeVerifier(verifier) { kept.verifier = verifier; },
  codeVerifier() { return kept.verifier; },
};
const input = readline.createInterface({ input: process.stdin });
const nextLine = () => new Promise((resolve) => input.once("line", resolve));

async function connected() {
  const client = new Client({ name: "ts-sdk-test", version: "1.0.0" });
  await client.connect(new StreamableHTTPClientTransport(new URL(serverUrl),
                                                         { authProvider: provider }));
  return client;
}

let client;
try {
  client = await connected();
} catch (error) {
  if (!(error instanceof UnauthorizedError)) throw error;
  const landed = new URL(await nextLine());
  if (landed.searchParams.get("error")) throw new Error(`refused: ${landed.search}`);
  const transport = new StreamableHTTPClientTransport(new URL(serverUrl), { authProvider: provider });
  await transport.finishAuth(landed.searchParams.get("code"));
  client = await connected();
}
const { tools } = await client.listTools();
console.log(JSON.stringify({ tools: tools.map((tool) => tool.name),
                             client_id: kept.client?.client_id,
                             refresh_token: Boolean(kept.tokens?.refresh_token) }));
await client.close();
input.close();
