// Add Identity Device → derived PIV credential end to end with real processes (support/rig.ts):
// virtual cards issued by Lanyard through Add Device sit in the private pcscd, the holders' real
// paired agents reach them, and they sponsor the enrolments. In the browser: a wrong PIN is
// verified on the card and shown with the tries left; the right PIN leads to the QR code, which
// zbarimg (Debian zbar-tools) reads back from a screenshot of it and which equals the link shown
// as text. `lanyard mobile enroll` (the reference app client) enrols with that payload; the
// derived certificate verifies with openssl against Lanyard's root, carries the derived PIV
// policy OID, passes pkilint, and is listed under the holder's identities linked to the card.
// An administrator disabling the holder makes `openssl ocsp` say revoked. Another user's card,
// and the holder's card after an operator revoked its certificate, are refused with the reason
// before any PIN. Last, a second holder's enrolment: their card marked lost by an operator
// revokes the credential it sponsored.

import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Page } from '@playwright/test';
import { test, expect } from '../support/lanyard';
import { Agent, CardRig, Session, until } from '../support/rig';
import { lanyardEnv } from '../support/serve';

const PIN = '97531864';
/** The derived PIV Authentication policy (software key, SP 800-157r1). */
const DERIVED_POLICY = '2.16.840.1.101.3.2.1.3.40';
const WRONG_PIN = '20241357';
/** The holder's card, issued to dana. */
const DANA = 0;
/** Omar's card, issued to him before dana's agent runs. */
const OMAR = 1;

let rig: CardRig;
let dana: Session;
let danaAgent: Agent;
let omarAgent: Agent;
/** The derived credential dana's card sponsored (PEM file), and the link it came from. */
let danaDerived = '';

// Each test goes on with the cards the one before left.
test.describe.configure({ mode: 'serial' });

/** zbarimg's path, or a failure naming the package that provides it. */
function zbarimg(): string {
  try {
    execFileSync('zbarimg', ['--version'], { stdio: 'pipe' });
  } catch {
    throw new Error('zbarimg is missing: install the Debian package zbar-tools (scripts/test installs it)');
  }
  return 'zbarimg';
}

/** pkilint's lint_pkix_cert from the test venv, or a failure naming the step that installs it. */
function lintPkixCert(): string {
  const p = path.resolve(__dirname, '..', '..', '..', 'target', 'test-venv', 'bin', 'lint_pkix_cert');
  if (!fs.existsSync(p)) throw new Error(`${p} is missing: ./scripts/test installs pkilint into target/test-venv`);
  return p;
}

/** Lanyard's root and issuing CA certificates as PEM files in the rig's directory. */
async function caFiles(): Promise<{ root: string; ca: string }> {
  const files = { root: path.join(rig.work, 'root.pem'), ca: path.join(rig.work, 'ca.pem') };
  for (const [route, file] of [['/pki/root.crt', files.root], ['/pki/ca.crt', files.ca]]) {
    if (fs.existsSync(file)) continue;
    const der = Buffer.from(await (await fetch(`${rig.baseURL}${route}`)).arrayBuffer());
    fs.writeFileSync(`${file}.der`, der);
    execFileSync('openssl', ['x509', '-inform', 'DER', '-in', `${file}.der`, '-out', file], { stdio: 'pipe' });
  }
  return files;
}

/** `lanyard mobile enroll` with the QR payload, a keystore and passphrase file of its own
 *  (named after `who`), trusting Lanyard's root: the answer (JSON) and the certificate as PEM. */
async function mobileEnroll(payload: string, who: string): Promise<{ issued: any; pem: string }> {
  const { root } = await caFiles();
  const dir = fs.mkdtempSync(path.join(rig.work, `phone-${who}-`));
  const passphrase = path.join(dir, 'passphrase.txt');
  fs.writeFileSync(passphrase, 'a phone keystore passphrase\n', { mode: 0o600 });
  const keystore = path.join(dir, 'keystore.json');
  const out = execFileSync(rig.bin, ['mobile', 'enroll', payload, '--ca-file', root, '--model', `${who}'s test phone`,
    '--keystore', keystore, '--passphrase-file', passphrase, '--output', 'json'], { env: lanyardEnv({}), stdio: 'pipe' })
    .toString();
  const issued = JSON.parse(out);
  const der = path.join(dir, 'derived.der');
  fs.writeFileSync(der, Buffer.from(issued.certificate, 'base64'));
  const pem = path.join(dir, 'derived.pem');
  execFileSync('openssl', ['x509', '-inform', 'DER', '-in', der, '-out', pem], { stdio: 'pipe' });
  const listed = JSON.parse(execFileSync(rig.bin, ['mobile', 'list', '--keystore', keystore, '--passphrase-file',
    passphrase, '--output', 'json'], { env: lanyardEnv({}), stdio: 'pipe' }).toString());
  expect(listed.map((e: any) => e.id)).toEqual([issued.credential_id]);
  return { issued, pem };
}

/** What the server's OCSP responder says of `pem`, through `openssl ocsp`. */
async function ocsp(pem: string): Promise<string> {
  const { root, ca } = await caFiles();
  return execFileSync('openssl', ['ocsp', '-issuer', ca, '-cert', pem, '-CAfile', root, '-url',
    `${rig.baseURL}/pki/ocsp`], { stdio: 'pipe' }).toString();
}

/** On the session page of a card asking for its PIN: the PIN, then the enrolment code; answers
 *  the link shown as text after checking that zbarimg reads the same from the QR code. */
async function codeFor(page: Page, pin: string, shotName: string): Promise<string> {
  await page.getByLabel('PIN', { exact: true }).fill(pin);
  await page.getByRole('button', { name: 'Verify' }).click();
  await expect(page.getByRole('heading', { name: 'Your card is verified' })).toBeVisible({ timeout: 60_000 });
  await page.getByRole('button', { name: 'Show the enrolment code' }).click();
  await expect(page.getByRole('heading', { name: 'Scan this with the app' })).toBeVisible();
  const link = (await page.locator('#enrol-link').innerText()).trim();
  expect(link).toMatch(new RegExp(`^${rig.baseURL.replace(/[.]/g, '\\.')}/m/[A-Za-z0-9_-]+$`));
  const shot = path.join(rig.work, shotName);
  await page.locator('#enrol-qr svg').screenshot({ path: shot });
  const read = execFileSync(zbarimg(), ['--quiet', '--raw', shot], { stdio: 'pipe' }).toString().trim();
  expect(read).toBe(link);
  return read;
}

/** Add Device in the browser for the signed-in user: the only compatible card is issued with
 *  PIN. */
async function addDevice(page: Page) {
  await page.goto(`${rig.baseURL}/portal/devices/new`);
  await expect(async () => {
    await page.getByRole('button', { name: 'Refresh' }).click();
    await expect(page.getByRole('button', { name: 'Issue this device' })).toBeVisible({ timeout: 1000 });
  }).toPass({ timeout: 60_000 });
  await page.getByRole('button', { name: 'Issue this device' }).click();
  await expect(page.getByRole('heading', { name: 'Choose your new PIN' })).toBeVisible({ timeout: 120_000 });
  await page.getByLabel('New PIN', { exact: true }).fill(PIN);
  await page.getByLabel('New PIN again').fill(PIN);
  await page.getByRole('button', { name: 'Set PIN' }).click();
  await expect(page.getByRole('heading', { name: 'Your device is ready' })).toBeVisible({ timeout: 60_000 });
}

/** Waits until the agent (dana's by default) reports card `k`, and no session on it. */
async function cardReady(k: number, who: Session = dana, agent: Agent = danaAgent) {
  await rig.agentReports(who, agent, rig.readerName(k));
  await until(`card ${k} idle`, async () => {
    const agents = (await rig.ok('GET', '/api/v1/agents', undefined, who)) as any[];
    const a = agents.find((x) => x.id === agent.id);
    const r = (a?.readers ?? []).find((x: any) => x.name === rig.readerName(k));
    return !!r?.card && !r.card.busy;
  }, 60_000);
}

/** From the pre-enrolment page, Continue: the session's page once it asks for the PIN or has
 *  ended. */
async function presentCard(page: Page) {
  await page.goto(`${rig.baseURL}/portal/identities/derived`);
  await page.getByRole('button', { name: 'Continue' }).click();
  await expect(page).toHaveURL(/\/portal\/identities\/derived\/[0-9a-f-]+$/);
  await expect(async () => {
    if (await page.getByRole('heading', { name: 'Checking your card' }).isVisible()) {
      await page.getByRole('link', { name: 'Refresh' }).click();
    }
    await expect(page.getByRole('heading', { name: 'Checking your card' })).toHaveCount(0, { timeout: 1000 });
  }).toPass({ timeout: 60_000 });
}

test.beforeAll(async ({ lanyard }) => {
  test.setTimeout(300_000);
  // Omar's card first, with his own agent, which then stops: the two agents never share a card.
  rig = await CardRig.start(lanyard.bin, { cards: 2, inserted: [OMAR] });
  rig.addUser({ username: 'dana', displayName: 'Dana Diaz' });
  rig.addUser({ username: 'omar', displayName: 'Omar Ortiz' });
  dana = await rig.login('dana');
});

test.afterAll(async () => {
  if (rig) await rig.stop();
});

test('two users each have a card issued by Lanyard through Add Device', async ({ page, check }) => {
  test.setTimeout(300_000);
  omarAgent = await rig.agentFor('omar', 'omar-desk');
  await rig.signIn(page, 'omar');
  await addDevice(page);
  await check('derived-omar-card');
  const gone = new Promise((r) => omarAgent.child?.once('exit', r));
  omarAgent.child?.kill('SIGTERM');
  await gone;
  rig.remove(OMAR);

  await page.context().clearCookies();
  rig.insert(DANA);
  danaAgent = await rig.agentFor('dana', 'dana-desk');
  await rig.signIn(page, 'dana');
  await addDevice(page);
  await check('derived-dana-card');
});

test('a wrong PIN is verified on the card and shown with the tries left', async ({ page, check }) => {
  test.setTimeout(180_000);
  expect(danaAgent, 'the first test starts dana\'s agent').toBeTruthy();
  await cardReady(DANA);
  await rig.signIn(page, 'dana');
  await page.goto(`${rig.baseURL}/portal/devices`);
  await page.locator('a[href="/portal/identities/derived"]').first().click();
  await expect(page.getByRole('heading', { level: 1 })).toHaveText('Add Identity Device: derived PIV credential');
  await expect(page.locator('main')).toContainText('Your PIV card in a reader');
  await check('derived-start');
  await presentCard(page);
  await expect(page.getByRole('heading', { name: "Your card's PIN" })).toBeVisible();
  await check('derived-pin');
  await page.getByLabel('PIN', { exact: true }).fill(WRONG_PIN);
  await page.getByRole('button', { name: 'Verify' }).click();
  await expect(page.getByRole('heading', { name: 'The PIN is wrong' })).toBeVisible({ timeout: 60_000 });
  await expect(page.getByRole('alert')).toContainText('2 tries left');
  await expect(page.locator('main')).not.toContainText(WRONG_PIN);
  await check('derived-pin-wrong');
});

test('the right PIN leads to the QR code; lanyard mobile enroll takes it, and the credential is derived from the card', async ({ page, check }) => {
  test.setTimeout(180_000);
  await cardReady(DANA);
  await rig.signIn(page, 'dana');
  await presentCard(page);
  await check('derived-pin-again');
  const payload = await codeFor(page, PIN, 'derived-qr.png');
  await check('derived-code');

  // The proof gives one code: its page now says so.
  await page.goto(page.url().replace(/\/code$/, ''));
  await expect(page.locator('main')).toContainText('has given its enrolment code already');
  await check('derived-spent');

  // The reference app client enrols with what the QR code holds.
  const { issued, pem } = await mobileEnroll(payload, 'dana');
  danaDerived = pem;
  const { root, ca } = await caFiles();
  expect(execFileSync('openssl', ['verify', '-CAfile', root, '-untrusted', ca, pem], { stdio: 'pipe' }).toString())
    .toContain(': OK');
  const text = execFileSync('openssl', ['x509', '-in', pem, '-noout', '-text'], { stdio: 'pipe' }).toString();
  expect(text).toContain(`Policy: ${DERIVED_POLICY}`);
  expect(issued.assurance).toBe('aal2');
  const lint = JSON.parse(execFileSync(lintPkixCert(), ['lint', '-s', 'ERROR', '-f', 'JSON', pem], { stdio: 'pipe' })
    .toString());
  const findings = (lint.results as any[]).flatMap((r) => r.finding_descriptions ?? [])
    // pkilint's URI parser rejects the urn:uuid: URIs FIPS 201 puts in PIV SANs.
    .filter((f: any) => !(f.code === 'pkix.invalid_uri_syntax' && String(f.message).includes('"urn:uuid:')));
  expect(findings, JSON.stringify(findings)).toEqual([]);
  expect((await ocsp(pem))).toMatch(/derived\.pem: good/);

  // My Devices lists the phone, Active, with its certificate and the card it derives from.
  const devices = (await rig.ok('GET', '/api/v1/devices', undefined, dana)) as any[];
  const card = devices.find((d) => d.kind !== 'mobile');
  await page.goto(`${rig.baseURL}/portal/devices`);
  const phone = page.locator('section.card', { has: page.locator(`a[href="/portal/devices/${issued.device_id}"]`) });
  await expect(phone.locator('.badge').first()).toHaveText('Active');
  await expect(phone).toContainText(issued.serial);
  await expect(phone.locator('.derived-from a')).toHaveAttribute('href', `/portal/devices/${card.id}`);
  await check('derived-listed');
  await page.goto(`${rig.baseURL}/portal/devices/${issued.device_id}`);
  await expect(page.locator('.derived-from a')).toHaveAttribute('href', `/portal/devices/${card.id}`);
  await check('derived-device');
});

test('an administrator disables the holder: openssl ocsp says the derived credential is revoked', async ({ page, check }) => {
  test.setTimeout(120_000);
  expect(danaDerived, 'the test before enrols a derived credential').not.toBe('');
  const users = (await rig.admin('GET', '/api/v1/users?q=dana')) as any[];
  const id = users.find((u) => u.username === 'dana').id;
  await rig.signIn(page, 'admin', rig.adminPassword);
  await page.goto(`${rig.baseURL}/portal/admin/users/${id}`);
  await page.getByRole('button', { name: 'Disable dana' }).click();
  await expect(page.locator('main .badge').first()).toHaveText('Disabled');
  await check('derived-holder-disabled');
  const answer = await ocsp(danaDerived);
  expect(answer).toMatch(/derived\.pem: revoked/);
  // The reason is privilegeWithdrawn (9), which openssl's table of OCSP reasons does not name
  // ("Reason: (UNKNOWN)"): the server's record says it.
  const held = (await rig.admin('GET', '/api/v1/users/dana/devices')) as any[];
  const phone = held.find((d) => d.kind === 'mobile');
  expect([phone.state, phone.revocation_reason]).toEqual(['revoked', 'privilege_withdrawn']);
  await page.getByRole('button', { name: 'Enable dana' }).click();
  await expect(page.locator('main .badge').first()).toHaveText('Enabled');
  expect(await ocsp(danaDerived), 'enabling the account again brings back nothing').toMatch(/derived\.pem: revoked/);
  dana = await rig.login('dana');
});

test("another user's card is refused with the reason, before any PIN", async ({ page, check }) => {
  test.setTimeout(180_000);
  rig.remove(DANA);
  rig.insert(OMAR);
  await cardReady(OMAR);
  await rig.signIn(page, 'dana');
  await presentCard(page);
  await expect(page.getByRole('heading', { name: 'This card cannot sponsor a derived credential' })).toBeVisible();
  await expect(page.getByRole('alert')).toContainText('this card is not one of yours');
  await expect(page.getByLabel('PIN', { exact: true })).toHaveCount(0);
  await check('derived-refused-foreign');
  rig.remove(OMAR);
  rig.insert(DANA);
});

test('a card whose certificate an operator revoked is refused with the reason', async ({ page, check }) => {
  test.setTimeout(180_000);
  const devices = (await rig.ok('GET', '/api/v1/devices', undefined, dana)) as any[];
  const card = devices.find((d) => d.kind !== 'mobile' && d.state === 'active');
  expect(card, JSON.stringify(devices)).toBeTruthy();
  const credentials = (await rig.admin('GET', `/api/v1/devices/${card.id}/credentials`)) as any[];
  const auth = credentials.find((c) => (c.kind?.slot ?? c.slot) === '9a');
  expect(auth, JSON.stringify(credentials)).toBeTruthy();
  await rig.admin('POST', `/api/v1/credentials/${auth.id}/revoke`, { reason: 'key_compromise' });

  await cardReady(DANA);
  await rig.signIn(page, 'dana');
  await presentCard(page);
  await expect(page.getByRole('heading', { name: 'This card cannot sponsor a derived credential' })).toBeVisible();
  await expect(page.getByRole('alert')).toContainText('revoked');
  await expect(page.getByLabel('PIN', { exact: true })).toHaveCount(0);
  await check('derived-refused-revoked');
});

test("a second enrolment: the sponsor card marked lost by an operator revokes the credential it sponsored", async ({ page, check }) => {
  test.setTimeout(240_000);
  // Omar's workstation now: dana's agent stops, his starts again, his card goes in.
  const gone = new Promise((r) => danaAgent.child?.once('exit', r));
  danaAgent.child?.kill('SIGTERM');
  await gone;
  rig.remove(DANA);
  rig.insert(OMAR);
  rig.runAgent(omarAgent);
  const omar = await rig.login('omar');
  await cardReady(OMAR, omar, omarAgent);

  await rig.signIn(page, 'omar');
  await presentCard(page);
  const payload = await codeFor(page, PIN, 'derived-qr-omar.png');
  const { issued, pem } = await mobileEnroll(payload, 'omar');
  expect(await ocsp(pem)).toMatch(/derived\.pem: good/);

  const devices = (await rig.ok('GET', '/api/v1/devices', undefined, omar)) as any[];
  const card = devices.find((d) => d.kind !== 'mobile');
  await rig.admin('POST', `/api/v1/devices/${card.id}/mark`, { condition: 'lost' });
  const answer = await ocsp(pem);
  expect(answer).toMatch(/derived\.pem: revoked/);
  await page.goto(`${rig.baseURL}/portal/devices/${issued.device_id}`);
  await expect(page.locator('main .badge').first()).toHaveText('Revoked');
  await check('derived-parent-lost');
});
