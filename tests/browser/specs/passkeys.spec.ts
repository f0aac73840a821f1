// Passkeys with Chromium's virtual authenticator (CDP WebAuthn domain: CTAP2 over USB, resident
// keys, user verification): Petra registers a passkey on her security key from My Devices, signs
// out and back in with it; an operator suspends the key in the help desk and the passkey is
// refused with a clear message; resuming it makes it work again; a replayed sign-in response is
// refused. The key is a virtual card issued through a real card session (`POST /api/v1/issuance`
// and `lanyard agent issue` on the rig's own pcscd), as global setup issues Erin's.
//
// Browsers refuse IP addresses as relying party ids, so the rig's server is told its public URL
// is http://localhost:<port> (a secure context, like https) and the browser uses that name.

import { execFileSync } from 'node:child_process';
import type { CDPSession, Page } from '@playwright/test';
import { CardRig } from '../support/rig';
import { lanyardEnv } from '../support/serve';
import { expect, test } from '../support/lanyard';

test.describe.configure({ mode: 'serial' });

let rig: CardRig;
let site = '';
let keyId = '';
const model = 'YubiKey 5';

test.beforeAll(async ({ lanyard }) => {
  test.setTimeout(180_000);
  rig = await CardRig.start(lanyard.bin, {
    cards: 1,
    serveEnv: { LANYARD_PUBLIC_URL: 'http://localhost:{port}' },
  });
  site = rig.baseURL.replace('127.0.0.1', 'localhost');
  rig.addUser({ username: 'petra', displayName: 'Petra Park' });
  rig.addUser({ username: 'omar', displayName: 'Omar Ortega', roles: ['operator'] });
  rig.addUser({ username: 'aria', displayName: 'Aria Auditor', roles: ['auditor'] });
  const petra = await rig.login('petra');
  const started = await rig.ok('POST', '/api/v1/issuance', { kind: 'usb_key', model, serial: String(rig.cardSerial(0)) }, petra);
  execFileSync(rig.bin, ['agent', 'issue', '--server', rig.baseURL, '--ticket', started.ticket, '--reader', rig.readerName(0)], {
    env: lanyardEnv({ PCSCLITE_CSOCK_NAME: rig.socket, LANYARD_NEW_PIN: '24681357' }),
    stdio: 'pipe',
  });
  keyId = started.device.id;
  const key = await rig.admin('GET', `/api/v1/devices/${keyId}`);
  if (key.state !== 'active') throw new Error(`Petra's key is ${key.state} after its card session`);
});

test.afterAll(async () => {
  if (rig) await rig.stop();
});

/** Chromium warns when registration options leave out RS256; Lanyard asks for ES256 alone on
 *  purpose (every FIDO2 security key has it; docs/passkeys.md), so that warning is expected. */
const ES256_ONLY = /pubKeyCredParams is missing at least one of the default algorithm identifiers/;

/** A virtual authenticator for `page`, as a security key with a PIN would behave. */
async function securityKey(page: Page): Promise<CDPSession> {
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('WebAuthn.enable', { enableUI: false });
  await cdp.send('WebAuthn.addVirtualAuthenticator', {
    options: {
      protocol: 'ctap2',
      transport: 'usb',
      hasResidentKey: true,
      hasUserVerification: true,
      isUserVerified: true,
      automaticPresenceSimulation: true,
    },
  });
  return cdp;
}

async function passwordSignIn(page: Page, username: string) {
  await page.goto(`${site}/portal/login`);
  await page.getByLabel('Username').fill(username);
  await page.getByLabel('Password').fill('correct horse battery staple');
  await page.getByRole('button', { name: 'Sign in', exact: true }).click();
  await page.waitForURL((u) => !u.pathname.endsWith('/portal/login'));
}

/** Registers this page's authenticator as one more passkey on Petra's key (the page lists one
 *  more afterwards). */
async function registerAnother(page: Page) {
  await page.goto(`${site}/portal/devices/${keyId}`);
  const section = page.locator('section', { has: page.getByRole('heading', { name: 'Passkeys' }) });
  const before = await section.getByRole('button', { name: /Remove passkey/ }).count();
  await page.getByRole('button', { name: 'Register a passkey' }).click();
  await expect(section.getByRole('button', { name: /Remove passkey/ })).toHaveCount(before + 1);
}

async function passkeySignIn(page: Page) {
  await page.goto(`${site}/portal/login`);
  await page.getByRole('button', { name: 'Sign in with a passkey' }).click();
}

/** The operator suspends or resumes Petra's key from the help desk's device page. */
async function operatorAction(page: Page, action: 'Suspend' | 'Resume') {
  const ctx = await page.context().browser()!.newContext();
  const op = await ctx.newPage();
  try {
    await op.goto(`${rig.baseURL}/portal/login`);
    await op.getByLabel('Username').fill('omar');
    await op.getByLabel('Password').fill('correct horse battery staple');
    await op.getByRole('button', { name: 'Sign in', exact: true }).click();
    await op.goto(`${rig.baseURL}/portal/operator/devices/${keyId}`);
    await op.getByRole('link', { name: action, exact: true }).click();
    await op.getByRole('button', { name: `${action} ${model}` }).click();
    await expect(op.locator('#state-badge')).toHaveText(action === 'Suspend' ? 'Suspended' : 'Active');
    // The help desk sees the passkey on the key, and whether it works.
    await expect(op.getByRole('heading', { name: 'Passkeys' })).toBeVisible();
    await expect(op.getByRole('table').filter({ hasText: 'Registered' }))
      .toContainText(action === 'Suspend' ? 'Disabled' : 'Works');
  } finally {
    await ctx.close();
  }
}

test('a holder registers a passkey from My Devices and signs in with it', async ({ page, check, allowConsole }) => {
  allowConsole(ES256_ONLY);
  await securityKey(page);
  await passwordSignIn(page, 'petra');
  await page.goto(`${site}/portal/devices/${keyId}`);
  await expect(page.getByRole('heading', { name: 'Passkeys' })).toBeVisible();
  await check('passkeys-device-before');
  await registerAnother(page);
  // The page reloaded once the passkey was registered, listing it.
  const section = page.locator('section', { has: page.getByRole('heading', { name: 'Passkeys' }) });
  await expect(section.getByRole('table')).toContainText('Works');
  await expect(section.getByRole('button', { name: /Remove passkey/ })).toBeVisible();
  await check('passkeys-device-registered');
  await page.goto(`${site}/portal/devices`);
  await expect(page.getByText(/\d+ registered, signing in\./)).toBeVisible();

  await page.getByRole('button', { name: 'Sign out' }).click();
  await expect(page.getByText('You are signed out.')).toBeVisible();
  await check('passkeys-sign-in');
  await page.getByRole('button', { name: 'Sign in with a passkey' }).click();
  await page.waitForURL(`${site}/portal/devices`);
  await expect(page.getByText('Signed in as')).toContainText('petra');

  const petra = await rig.login('petra');
  const audit = await rig.ok('GET', '/api/v1/audit?limit=1000', undefined, await rig.login('aria'));
  const actions = audit.map((e: any) => e.action);
  expect(actions).toEqual(expect.arrayContaining(['passkey.register', 'passkey.sign_in']));
  const mine = await rig.ok('GET', '/api/v1/me/passkeys', undefined, petra);
  expect(mine.length).toBeGreaterThan(0);
  expect(mine.every((p: any) => p.device === keyId && p.usable)).toBe(true);
});

test('suspending the key refuses its passkey with a clear message; resuming restores it', async ({ page, check, allowConsole }) => {
  allowConsole(/status of 403/);
  allowConsole(ES256_ONLY);
  await securityKey(page);
  // The registration of the first test lives in that page's authenticator; this page's
  // authenticator gets its own passkey the same way.
  await passwordSignIn(page, 'petra');
  await registerAnother(page);
  await page.getByRole('button', { name: 'Sign out' }).click();

  await operatorAction(page, 'Suspend');
  await passkeySignIn(page);
  const status = page.locator('[data-passkey-status]');
  await expect(status).toContainText('Not signed in');
  await expect(status).toContainText('security key is suspended');
  await expect(page).toHaveURL(`${site}/portal/login`);
  await check('passkeys-sign-in-suspended');

  await operatorAction(page, 'Resume');
  await passkeySignIn(page);
  await page.waitForURL(`${site}/portal/devices`);
  await expect(page.getByText('Signed in as')).toContainText('petra');
});

test('a replayed sign-in response is refused', async ({ page, allowConsole }) => {
  allowConsole(/status of 409/);
  allowConsole(ES256_ONLY);
  await securityKey(page);
  await passwordSignIn(page, 'petra');
  await registerAnother(page);
  await page.getByRole('button', { name: 'Sign out' }).click();

  // Keep what the page sends, then sign in with it.
  let sent = '';
  await page.route('**/api/v1/passkeys/sign-in', async (route) => {
    sent = route.request().postData() ?? '';
    await route.continue();
  });
  await passkeySignIn(page);
  await page.waitForURL(`${site}/portal/devices`);
  expect(sent).toContain('authenticatorData');
  await page.getByRole('button', { name: 'Sign out' }).click();

  // The same response again, in a sign-in this browser starts afresh: refused.
  const options = await page.request.post(`${site}/api/v1/passkeys/sign-in/options`);
  expect(options.status()).toBe(200);
  const replay = await page.request.post(`${site}/api/v1/passkeys/sign-in`, {
    data: sent, headers: { 'content-type': 'application/json' },
  });
  expect(replay.status()).toBe(409);
  expect((await replay.json()).error).toContain('already used');
  const audit = await rig.ok('GET', '/api/v1/audit?limit=1000', undefined, await rig.login('aria'));
  const reasons = audit.filter((e: any) => e.action === 'passkey.sign_in_refused').map((e: any) => e.after.reason);
  expect(reasons).toContain('challenge');
});
