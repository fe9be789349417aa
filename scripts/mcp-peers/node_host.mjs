// @modelcontextprotocol/sdk (1.32.x) client as the MCP host of `agentgate mcp`, for scripts/e2e-mcp-peers.sh.
// Adapted from ../shared/peers/mcp/node_client.mjs. Claude Code itself is built on this SDK.
//
// usage: node node_host.mjs channel|permission --http URL --connector-url URL --record FILE -- <server command...>
//
//  channel:    a Teams message posted to /api/messages arrives as notifications/claude/channel (typed handler):
//              the envelope, identifier meta keys; `reply` reaches the fake Connector.
//  permission: plays Claude Code's permission relay: checks experimental["claude/channel/permission"], sends
//              notifications/claude/channel/permission_request, watches the approval card reach the approver's
//              1:1 chat on the fake Connector, answers it from Teams (a non-approver's Action.Execute: no verdict;
//              the approver's: allow; the approver typing `no ID`: deny) and expects
//              notifications/claude/channel/permission {request_id, behavior}.
// Prints `PASS: …` / `FAIL: …` per check and `DONE` at the end; exits 0 when every check passed.
// Env: E2E_APP_ID, E2E_TENANT, E2E_ALEX, E2E_APPROVER, E2E_EVE (AAD object ids), E2E_NONCE.
//      E2E_SIGNING_KEY (a PKCS#8 PEM file) and E2E_SIGNING_KID: in permission mode every activity carries a
//      Bot Framework token signed with that key (the fake Connector publishes its JWK, endorsed for msteams):
//      the gateway lets only authenticated activities answer an approval, even in dev mode.
import { createSign } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { z } from 'zod';

const argv = process.argv.slice(2);
const mode = argv.shift();
const opt = {};
while (argv.length && argv[0] !== '--') { const k = argv.shift().replace(/^--/, ''); opt[k] = argv.shift(); }
argv.shift();
const [command, ...args] = argv;
const { E2E_APP_ID: APP, E2E_TENANT: TENANT, E2E_ALEX: ALEX, E2E_APPROVER: APPROVER, E2E_EVE: EVE, E2E_NONCE: NONCE } = process.env;
const ENVELOPE = /^⟦untrusted_content ([A-Za-z0-9]+)⟧\n([\s\S]*)\n⟦\/untrusted_content \1⟧$/u;
const DEV_TOKEN = 'Bearer agentgate-dev-mode-no-credential';
const VERB = 'agentgate.permission';

let failed = 0;
const check = (name, ok, detail) => {
  if (ok) console.log(`PASS: node sdk: ${name}`);
  else { failed++; console.log(`FAIL: node sdk: ${name}${detail === undefined ? '' : ' -- ' + (typeof detail === 'string' ? detail : JSON.stringify(detail))}`); }
  return ok;
};
const sleep = ms => new Promise(r => setTimeout(r, ms));
const until = async (f, ms) => { const end = Date.now() + ms; for (;;) { const v = f(); if (v) return v; if (Date.now() > end) return undefined; await sleep(50); } };
const records = () => { try { return readFileSync(opt.record, 'utf8').split('\n').filter(l => l.trim()).map(l => JSON.parse(l)); } catch { return []; } };
const b64url = v => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');
// A Bot Framework channel token as Microsoft mints it: RS256, kid, iss api.botframework.com, aud the bot's app id,
// serviceurl the activity's serviceUrl, a few minutes of life.
const channelToken = serviceUrl => {
  const now = Math.floor(Date.now() / 1000);
  const head = b64url({ alg: 'RS256', typ: 'JWT', kid: process.env.E2E_SIGNING_KID });
  const claims = b64url({ iss: 'https://api.botframework.com', aud: APP, serviceurl: serviceUrl, nbf: now - 5, iat: now - 5, exp: now + 300 });
  const sig = createSign('RSA-SHA256').update(`${head}.${claims}`).sign(readFileSync(process.env.E2E_SIGNING_KEY)).toString('base64url');
  return `Bearer ${head}.${claims}.${sig}`;
};
const signed = () => mode === 'permission' && !!process.env.E2E_SIGNING_KEY;
const post = async body => {
  const headers = { 'content-type': 'application/json', ...(signed() ? { authorization: channelToken(body.serviceUrl) } : {}) };
  const r = await fetch(`${opt.http}/api/messages`, { method: 'POST', headers, body: JSON.stringify(body), signal: AbortSignal.timeout(10000) });
  const text = await r.text(); let json; try { json = JSON.parse(text); } catch { json = text; }
  return { status: r.status, body: json };
};
const activity = (type, { id, chat, aad, name, text, extra }) => ({
  type, id, timestamp: new Date().toISOString(), serviceUrl: opt['connector-url'], channelId: 'msteams',
  from: { id: `29:${name.toLowerCase()}`, name, aadObjectId: aad },
  conversation: { conversationType: 'personal', tenantId: TENANT, id: chat },
  recipient: { id: `28:${APP}`, name: 'agentgate e2e' },
  ...(text === undefined ? {} : { text, textFormat: 'plain' }),
  locale: 'en-US', channelData: { tenant: { id: TENANT } }, ...extra,
});
const invoke = (id, chat, aad, name, replyToId, data) => activity('invoke', { id, chat, aad, name, extra: {
  name: 'adaptiveCard/action', replyToId, value: { action: { type: 'Action.Execute', title: data.behavior, verb: VERB, data } } } });

const transport = new StdioClientTransport({ command, args, env: process.env, stderr: 'inherit' });
const client = new Client({ name: 'claude-code-e2e', version: '0.0.1' }, { capabilities: {} });
const channel = [];
const verdicts = [];
client.setNotificationHandler(
  z.object({ method: z.literal('notifications/claude/channel'), params: z.object({ content: z.string(), meta: z.record(z.string(), z.string()).optional() }) }),
  n => { channel.push(n.params); console.error('channel', JSON.stringify(n.params)); });
client.setNotificationHandler(
  z.object({ method: z.literal('notifications/claude/channel/permission'), params: z.object({ request_id: z.string(), behavior: z.string() }).passthrough() }),
  n => { verdicts.push(n.params); console.error('verdict', JSON.stringify(n.params)); });
client.fallbackNotificationHandler = async n => console.error('other notification', JSON.stringify(n));

const healthy = async () => {
  const end = Date.now() + 20000;
  while (Date.now() < end) {
    try { if ((await fetch(`${opt.http}/healthz`, { signal: AbortSignal.timeout(2000) })).status === 200) return true; } catch { /* not yet */ }
    await sleep(100);
  }
  return false;
};

async function channelMode() {
  const caps = client.getServerCapabilities() ?? {};
  check('the server declares experimental claude/channel', !!caps.experimental?.['claude/channel'], caps);
  const tools = (await client.listTools()).tools.map(t => t.name);
  check('tools/list has the 23 tools', tools.length === 23 && tools.includes('reply') && tools.includes('status') && tools.includes('get_file') && tools.includes('send_file') && tools.includes('claim_conversations'), tools);
  if (!check("the gateway's HTTP side is up (GET /healthz)", await healthy())) return;
  const chat = `a:node-${NONCE}`;
  const m = activity('message', { id: `node-msg-${NONCE}`, chat, aad: ALEX, name: 'Alex', text: `<p>node ${NONCE}: is the build green?</p>` });
  const r = await post(m);
  check('POST /api/messages (personal message, dev-anonymous) -> 202', r.status === 202, r);
  const n = await until(() => channel.find(p => p.meta?.message_id === m.id), 10000);
  if (!check('notifications/claude/channel arrives at the typed notification handler (within 10 s)', !!n, `${channel.length} other channel notifications`)) return;
  const e = ENVELOPE.exec(n.content);
  check('content is the ⟦untrusted_content NONCE⟧ envelope around the sender\'s text (HTML stripped)', !!e && e[2] === `node ${NONCE}: is the build green?`, n.content);
  const meta = n.meta ?? {};
  check('meta keys are identifiers ([A-Za-z0-9_]+) and name the chat, message, sender, tenant',
    Object.keys(meta).length > 0 && Object.keys(meta).every(k => /^[A-Za-z0-9_]+$/.test(k)) &&
    meta.chat_id === chat && meta.message_id === m.id && meta.user_id === ALEX && meta.tenant === TENANT && meta.event === 'message', meta);
  const text = `node reply ${NONCE}: yes, all green ✓`;
  const res = await client.callTool({ name: 'reply', arguments: { chat_id: chat, text } });
  check('tools/call reply -> delivered', !res.isError && res.structuredContent?.status === 'delivered', res);
  const landed = records().filter(x => x.method === 'POST' && x.conversation === chat && x.body?.text === text);
  check('the fake Connector received the reply (dev token)', landed.length === 1 && landed[0].authorization === DEV_TOKEN, landed);
}

// The approval card sent for `id` to the approver's 1:1 chat, as the fake Connector recorded it.
const cardFor = (id, chat) => records().find(x => x.method === 'POST' && x.conversation === chat &&
  (x.body?.attachments ?? []).some(a => a.contentType === 'application/vnd.microsoft.card.adaptive' &&
    (a.content?.body ?? []).some(b => (b.facts ?? []).some(f => f.value === id))));
const cardOk = (rec, id) => {
  const card = rec.body.attachments.find(a => a.contentType === 'application/vnd.microsoft.card.adaptive').content;
  const acts = card.actions ?? [];
  return acts.length === 2 && acts.every(a => a.type === 'Action.Execute' && a.verb === VERB && a.data?.request_id === id) &&
    acts.map(a => a.data.behavior).sort().join(',') === 'allow,deny' && rec.authorization === DEV_TOKEN;
};

async function permissionMode() {
  const caps = client.getServerCapabilities() ?? {};
  if (!check('the server declares experimental claude/channel and claude/channel/permission (a bot has approvers)',
    !!caps.experimental?.['claude/channel'] && !!caps.experimental?.['claude/channel/permission'], caps)) return;
  if (!check("the gateway's HTTP side is up (GET /healthz)", await healthy())) return;

  // The approver messages the bot once: now a 1:1 conversation exists to send cards to.
  const dm = `a:approver-dm-${NONCE}`;
  const hello = activity('message', { id: `approver-hello-${NONCE}`, chat: dm, aad: APPROVER, name: 'Megan', text: 'hi bot' });
  const r0 = await post(hello);
  check('the approver messages the bot in a personal chat -> 202', r0.status === 202, r0);
  check('... and that message reaches the host as a channel notification', !!(await until(() => channel.find(p => p.meta?.message_id === hello.id), 10000)));

  // 1. Claude Code asks; the card reaches the approver.
  const preview = JSON.stringify({ command: `ls -la /srv/${NONCE}`, description: 'list the files' });
  await client.notification({ method: 'notifications/claude/channel/permission_request',
    params: { request_id: 'abcde', tool_name: 'Bash', description: 'List the files in the deployment directory', input_preview: preview } });
  const card1 = await until(() => cardFor('abcde', dm), 10000);
  if (!check('permission_request abcde -> the fake Connector receives the card in the approver\'s 1:1 chat', !!card1, records().slice(-3))) return;
  check('the card has two Action.Execute actions (allow, deny), verb agentgate.permission, data.request_id abcde', cardOk(card1, 'abcde'), card1.body);
  const cardMessageId = card1.response?.id; // the message id the Connector gave the card

  // 2. A non-approver clicks Allow: nothing is decided. From her own chat the click is not on the card at all;
  //    in the card's conversation it is on the card, but she is no approver.
  const eveElsewhere = invoke(`eve-invoke-1-${NONCE}`, `a:eve-dm-${NONCE}`, EVE, 'Eve', cardMessageId, { request_id: 'abcde', behavior: 'allow' });
  const r0b = await post(eveElsewhere);
  check('a non-approver\'s adaptiveCard/action invoke from another chat (allow abcde) -> HTTP 200 saying it is not the approval card',
    r0b.status === 200 && JSON.stringify(r0b.body).includes('not the approval card'), r0b);
  const eve = invoke(`eve-invoke-2-${NONCE}`, dm, EVE, 'Eve', cardMessageId, { request_id: 'abcde', behavior: 'allow' });
  const r1 = await post(eve);
  check('a non-approver\'s adaptiveCard/action invoke on the card (allow abcde) -> HTTP 200 saying only an approver can answer',
    r1.status === 200 && JSON.stringify(r1.body).includes('Only an approver'), r1);
  await sleep(2000);
  check('... and no notifications/claude/channel/permission within 2 s', verdicts.length === 0, verdicts);

  // 3. The approver clicks Allow.
  const ok = invoke(`approver-invoke-${NONCE}`, dm, APPROVER, 'Megan', cardMessageId, { request_id: 'abcde', behavior: 'allow' });
  const r2 = await post(ok);
  check('the approver\'s adaptiveCard/action invoke (allow abcde) -> HTTP 200 with the settled card', r2.status === 200 && JSON.stringify(r2.body).includes('Allowed'), r2);
  const v1 = await until(() => verdicts.find(v => v.request_id === 'abcde'), 5000);
  check('notifications/claude/channel/permission {request_id: "abcde", behavior: "allow"} reaches the host',
    !!v1 && v1.behavior === 'allow' && verdicts.length === 1, verdicts);

  // 4. A second request, denied by typing `no fghij` in the 1:1 chat.
  await client.notification({ method: 'notifications/claude/channel/permission_request',
    params: { request_id: 'fghij', tool_name: 'Write', description: 'Write a file', input_preview: '{"file_path":"/tmp/x","content":"y"}' } });
  const card2 = await until(() => cardFor('fghij', dm), 10000);
  check('permission_request fghij -> a second card in the approver\'s 1:1 chat', !!card2 && cardOk(card2, 'fghij'), card2?.body);
  const no = activity('message', { id: `approver-no-${NONCE}`, chat: dm, aad: APPROVER, name: 'Megan', text: 'no fghij' });
  const r3 = await post(no);
  check('the approver types "no fghij" in the 1:1 chat -> 202', r3.status === 202, r3);
  const v2 = await until(() => verdicts.find(v => v.request_id === 'fghij'), 5000);
  check('notifications/claude/channel/permission {request_id: "fghij", behavior: "deny"} reaches the host', !!v2 && v2.behavior === 'deny', verdicts);
  await sleep(1000);
  check('the typed verdict is not also forwarded as chat (no channel notification for it)', !channel.some(p => p.meta?.message_id === no.id), channel.map(p => p.meta?.message_id));
  check('the settled cards were updated in place (PUT with no actions left, per request)', ['abcde', 'fghij'].every(id =>
    records().some(x => x.method === 'PUT' && x.conversation === dm && (x.body?.attachments ?? []).some(a =>
      JSON.stringify(a.content).includes(`"${id}"`) && !(a.content.actions ?? []).length))), records().filter(x => x.method === 'PUT').map(x => x.path));
}

try {
  await client.connect(transport);
  if (mode === 'channel') await channelMode();
  else if (mode === 'permission') await permissionMode();
  else throw new Error(`unknown mode ${mode}`);
  await client.close();
  console.log('DONE');
} catch (e) {
  check(`the ${mode} session ran to the end`, false, String(e && e.stack || e));
  try { await client.close(); } catch { /* gone */ }
}
process.exit(failed ? 1 : 0);
