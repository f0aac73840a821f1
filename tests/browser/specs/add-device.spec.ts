// Add Device end to end with real processes, from the card rig (support/rig.ts): a `lanyard
// serve` of this spec's own (trusting the virtual cards' attestation root), a pcscd of its own,
// `lanyard vcard run` plugging factory-fresh virtual cards into it, and `lanyard agent pair` +
// `lanyard agent run` with the code the portal shows. In the
// browser: sign in, Add Device, the card detected, live progress, the new PIN typed in the page,
// Active; then OpenSC signs with slot 9A using that PIN. Last, neither that PIN nor a Pending
// card's initial PIN is found in the server's data directory, the server's and agent's logs or the
// audit log.

import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test, expect, screenshotDir } from '../support/lanyard';
import { CardRig } from '../support/rig';

const NEW_PIN = '97531864';

let rig: CardRig;
/** The rig's work directory (logs, files made here). */
let work: string;
/** The device the Skip test leaves Pending. */
let pendingDevice = '';
/** The initial PIN the operator portal showed when it activated the Pending card. */
let initialPin = '';
/** The device the first test issues and leaves Active. */
let activeDevice = '';
/** Erin's agent's log, written by `agent run`. */
let agentLog = '';

// The second test uses the agent the first one paired and started.
test.describe.configure({ mode: 'serial' });

async function signInErin(page: import('@playwright/test').Page) {
  await rig.signIn(page, 'erin');
  await expect(page).toHaveURL(`${rig.baseURL}/portal/devices`);
}

test.beforeAll(async ({ lanyard }) => {
  // Two factory-fresh cards; the second waits outside its reader for the Skip test.
  rig = await CardRig.start(lanyard.bin, { cards: 2, inserted: [0] });
  work = rig.work;
  rig.addUser({ username: 'erin', displayName: 'Erin Ellis' });
});

test.afterAll(async () => {
  if (rig) await rig.stop();
});

test('Add Device: the card is detected, issued with live progress, and the PIN typed in the page opens it', async ({ page, check, allowConsole }) => {
  test.setTimeout(240_000);
  allowConsole(/status of 400/);
  const READER = rig.readerName(0);
  await signInErin(page);
  await page.getByRole('link', { name: 'Add Device' }).click();
  await expect(page.getByRole('heading', { name: 'Step 1: pair your workstation' })).toBeVisible();

  // Pair with the code the page shows, and start the agent on the private pcscd.
  await page.getByRole('button', { name: 'Show a pairing code' }).click();
  const code = (await page.locator('#pairing .code').innerText()).trim();
  agentLog = rig.runAgent(rig.pairAgent(code, 'erin-desk')).log;

  // Refresh until the agent has connected and reported the card.
  await expect(async () => {
    await page.getByRole('button', { name: 'Refresh' }).click();
    await expect(page.getByRole('button', { name: 'Issue this device' })).toBeVisible({ timeout: 1000 });
  }).toPass({ timeout: 60_000 });
  await expect(page.locator('main dl.facts')).toContainText(`${READER} on erin-desk`);
  await check('add-device-card');

  await page.getByRole('button', { name: 'Issue this device' }).click();
  await expect(page).toHaveURL(/\/portal\/jobs\/[0-9a-f-]+$/);
  await expect(page.getByRole('status')).not.toBeEmpty();
  // The page reloads when the phase changes, so no axe run here: a screenshot only, taken once
  // the events have named an engine step and moved the bar (if the card is quicker than that,
  // of the page as it is).
  fs.mkdirSync(screenshotDir, { recursive: true });
  for (let i = 0; i < 100; i++) {
    const shown = await page.evaluate(() => ({
      status: document.getElementById('job-status')?.textContent ?? '',
      value: (document.getElementById('job-progress') as HTMLProgressElement | null)?.value ?? 0,
      asking: document.getElementById('pin-form') !== null,
    })).catch(() => null);
    if (shown && (shown.asking || (shown.value > 20 && shown.status.endsWith('…')))) break;
    await page.waitForTimeout(50);
  }
  await page.screenshot({ path: path.join(screenshotDir, 'add-device-progress.png'), fullPage: true });

  // The server's events move the page on to the PIN step.
  await expect(page.getByRole('heading', { name: 'Choose your new PIN' })).toBeVisible({ timeout: 120_000 });
  const jobUrl = page.url();
  // The page checks the rules as the PIN is typed, and does not send a PIN that breaks one.
  await page.getByLabel('New PIN', { exact: true }).fill('111111');
  await page.getByLabel('New PIN again').fill('111111');
  await expect(page.locator('#pin-check')).toHaveText('The PIN must not repeat one digit (like 111111).');
  await check('add-device-pin');
  await page.getByRole('button', { name: 'Set PIN' }).click();
  await expect(page).toHaveURL(jobUrl);
  await expect(page.getByRole('heading', { name: 'Choose your new PIN' })).toBeVisible();
  // The server checks again: the same PIN posted past the script is refused with the rule.
  await Promise.all([
    page.waitForURL(`${jobUrl}/pin`),
    page.locator('#pin-form').evaluate((f: HTMLFormElement) => {
      const a = document.createElement('input');
      a.type = 'hidden'; a.name = 'action'; a.value = 'set';
      f.appendChild(a);
      f.submit();
    }),
  ]);
  await expect(page.getByRole('alert')).toContainText('PIN must not repeat one digit');
  await expect(page.getByLabel('New PIN', { exact: true })).toHaveValue('');

  await page.getByLabel('New PIN', { exact: true }).fill(NEW_PIN);
  await page.getByLabel('New PIN again').fill(NEW_PIN);
  await expect(page.locator('#pin-check')).toHaveText('This PIN meets the rules.');
  await page.getByRole('button', { name: 'Set PIN' }).click();
  await expect(page.getByRole('heading', { name: 'Your device is ready' })).toBeVisible({ timeout: 60_000 });
  await expect(page.locator('main')).toContainText('Active');
  await check('add-device-done');
  await page.getByRole('link', { name: 'See the device' }).click();
  await expect(page.locator('main .badge').first()).toHaveText('Active');
  activeDevice = page.url().split('/').pop() ?? '';

  // OpenSC logs in with the PIN typed in the browser and signs with the 9A key.
  const data = path.join(work, 'data.txt');
  fs.writeFileSync(data, 'signed by a card issued from the portal');
  const pkcs11 = (args: string[]) => rig.pkcs11(args);
  pkcs11(['--login', '--pin', NEW_PIN, '--sign', '--id', '01', '-m', 'ECDSA-SHA256',
    '--signature-format', 'openssl', '-i', data, '-o', path.join(work, 'sig.der')]);
  // The signature verifies with the key of the certificate Lanyard wrote to slot 9A.
  pkcs11(['--read-object', '--type', 'cert', '--id', '01', '-o', path.join(work, '9a.der')]);
  execFileSync('openssl', ['x509', '-inform', 'DER', '-in', path.join(work, '9a.der'), '-pubkey', '-noout',
    '-out', path.join(work, '9a.pub')], { stdio: 'pipe' });
  const verified = execFileSync('openssl', ['dgst', '-sha256', '-verify', path.join(work, '9a.pub'),
    '-signature', path.join(work, 'sig.der'), data], { stdio: 'pipe' }).toString();
  expect(verified).toContain('Verified OK');
  expect(() => pkcs11(['--login', '--pin', '000000', '-O'])).toThrow();
});

/** `openssl ocsp` for the 9A certificate read from the card, against the server's responder. */
async function ocspOf9a(): Promise<string> {
  const fetchPem = async (url: string, file: string) => {
    const der = Buffer.from(await (await fetch(url)).arrayBuffer());
    fs.writeFileSync(`${file}.der`, der);
    execFileSync('openssl', ['x509', '-inform', 'DER', '-in', `${file}.der`, '-out', file], { stdio: 'pipe' });
  };
  await fetchPem(`${rig.baseURL}/pki/root.crt`, path.join(work, 'root.pem'));
  await fetchPem(`${rig.baseURL}/pki/ca.crt`, path.join(work, 'ca.pem'));
  execFileSync('openssl', ['x509', '-inform', 'DER', '-in', path.join(work, '9a.der'), '-out', path.join(work, '9a.pem')],
    { stdio: 'pipe' });
  return execFileSync('openssl', ['ocsp', '-issuer', path.join(work, 'ca.pem'), '-cert', path.join(work, '9a.pem'),
    '-CAfile', path.join(work, 'root.pem'), '-url', `${rig.baseURL}/pki/ocsp`],
  { stdio: 'pipe' }).toString() + '';
}

test('an operator suspends and resumes the issued card in the operator portal, and openssl ocsp follows', async ({ page, check }) => {
  test.setTimeout(120_000);
  expect(activeDevice, 'the first test leaves an Active device').not.toBe('');
  expect(await ocspOf9a()).toMatch(/9a\.pem: good/);
  await rig.signIn(page, 'admin', rig.adminPassword);
  await page.goto(`${rig.baseURL}/portal/operator/devices/${activeDevice}`);
  await expect(page.locator('#state-badge')).toHaveText('Active');
  await page.getByRole('link', { name: 'Suspend' }).click();
  await expect(page.getByRole('heading', { level: 1 })).toHaveText('Suspend this YubiKey 5?');
  await expect(page.locator('main')).toContainText('Erin Ellis');
  await page.getByLabel(/Note for the audit log/).fill('card left in a meeting room');
  await page.getByRole('button', { name: 'Suspend YubiKey 5' }).click();
  await expect(page.locator('#state-badge')).toHaveText('Suspended');
  await check('operator-suspended-issued-card');
  const held = await ocspOf9a();
  expect(held).toMatch(/9a\.pem: revoked/);
  expect(held).toContain('certificateHold');
  await page.getByRole('link', { name: 'Resume' }).click();
  await page.getByRole('button', { name: 'Resume YubiKey 5' }).click();
  await expect(page.locator('#state-badge')).toHaveText('Active');
  expect(await ocspOf9a()).toMatch(/9a\.pem: good/);
});

test('Skip keeps the initial PIN: the device is Pending, and the page says what happens next', async ({ page, check }) => {
  test.setTimeout(240_000);
  const READER = rig.readerName(0);
  const SECOND = rig.readerName(1);
  rig.insert(1);
  await signInErin(page);
  await page.goto(`${rig.baseURL}/portal/devices/new`);
  await expect(async () => {
    await page.getByRole('button', { name: 'Refresh' }).click();
    await expect(page.getByRole('button', { name: 'Issue this device' })).toBeVisible({ timeout: 1000 });
  }).toPass({ timeout: 60_000 });
  // The first card is issued now: listed with the reason, not offered.
  await expect(page.locator('main dl.facts')).toContainText(`${SECOND} on erin-desk`);
  await expect(page.getByText(`${READER} on erin-desk: this card has been issued already.`)).toBeVisible();
  await page.getByRole('button', { name: 'Issue this device' }).click();
  await expect(page.getByRole('heading', { name: 'Choose your new PIN' })).toBeVisible({ timeout: 120_000 });
  await page.getByRole('button', { name: 'Skip' }).click();
  await expect(page.getByRole('heading', { name: 'Issued, with the initial PIN' })).toBeVisible({ timeout: 60_000 });
  await expect(page.locator('main')).toContainText('An operator activates it');
  await check('add-device-pending');
  await page.getByRole('link', { name: 'See the device' }).click();
  await expect(page.locator('main .badge').first()).toHaveText('Pending');
  pendingDevice = page.url().split('/').pop() ?? '';
});

test('an operator activates the Pending card in the operator portal; the initial PIN shown once opens it', async ({ page, check }) => {
  test.setTimeout(120_000);
  expect(pendingDevice, 'the Skip test leaves a Pending device').not.toBe('');
  await rig.signIn(page, 'admin', rig.adminPassword);
  await page.goto(`${rig.baseURL}/portal/operator/devices/${pendingDevice}`);
  await expect(page.locator('#state-badge')).toHaveText('Pending');
  await page.getByRole('link', { name: 'Activate' }).click();
  await expect(page.locator('main')).toContainText('Erin Ellis');
  await page.getByLabel(/Note for the audit log/).fill('holder at the desk, ID checked');
  await page.getByRole('button', { name: /^Activate/ }).click();
  await expect(page.getByRole('heading', { level: 1 })).toHaveText(/is active$/);
  await expect(page.getByRole('alert')).toContainText('shown this once');
  initialPin = (await page.locator('#initial-pin').innerText()).trim();
  expect(initialPin).toMatch(/^[0-9]{6,8}$/);
  await check('operator-activated');
  // Back on the device's page it is Active, and the PIN is not shown again.
  await page.getByRole('link', { name: /back to the device/ }).click();
  await expect(page.locator('#state-badge')).toHaveText('Active');
  expect(await page.content()).not.toContain(initialPin);
  // OpenSC opens the card with that PIN (the first card leaves its reader, so only this one is
  // there to choose).
  rig.remove(0);
  const objects = rig.pkcs11(['--login', '--pin', initialPin, '-O']);
  expect(objects).toContain('Certificate Object');
});

/** Every regular file below `dir`. */
function filesBelow(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    return e.isDirectory() ? filesBelow(p) : e.isFile() ? [p] : [];
  });
}

test('no PIN is kept anywhere: database, server and agent logs, audit log', async () => {
  expect(pendingDevice, 'the Skip test leaves a Pending device').not.toBe('');
  // The operator portal revealed the Pending card's initial PIN (once, in the test before); the
  // holder's PIN is the one typed in the browser in the first test.
  expect(initialPin, 'the activation test read the initial PIN').toMatch(/^[0-9]{6,8}$/);
  const admin = await rig.login('admin', rig.adminPassword);
  const audit = await fetch(`${rig.baseURL}/api/v1/audit?limit=1000`, { headers: { cookie: admin.cookie } });
  expect(audit.status).toBe(200);
  const auditText = await audit.text();
  expect(auditText).toContain('device.activate');
  // The server's whole data directory (database and its WAL, CA, KEK), its log, and the agent's.
  const places: [string, Buffer][] = [
    ...filesBelow(rig.served.data).map((f): [string, Buffer] => [f, fs.readFileSync(f)]),
    [path.join(rig.served.dir, 'serve.log'), fs.readFileSync(path.join(rig.served.dir, 'serve.log'))],
    [agentLog, fs.readFileSync(agentLog)],
    ['GET /api/v1/audit', Buffer.from(auditText)],
  ];
  expect(places.some(([f]) => f.endsWith('lanyard.db'))).toBe(true);
  // Not a search of empty files: the logs hold the sessions the tests ran.
  expect(fs.readFileSync(agentLog, 'utf8')).toContain('connected');
  expect(fs.readFileSync(path.join(rig.served.dir, 'serve.log'), 'utf8').length).toBeGreaterThan(100);
  for (const [name, pin] of [['the PIN typed in the browser', NEW_PIN], ['the initial PIN', initialPin]]) {
    // As text, and as the hex of its ASCII digits (how an APDU would show in a log).
    const forms = [pin, Buffer.from(pin).toString('hex'), Buffer.from(pin).toString('hex').toUpperCase()];
    for (const [where, bytes] of places) {
      for (const form of forms) {
        expect(bytes.includes(Buffer.from(form)), `${name} (${form}) found in ${where}`).toBe(false);
      }
    }
  }
});
