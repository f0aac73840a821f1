// Add Identity Device → derived PIV credential end to end with real processes (support/rig.ts):
// a virtual card issued by Lanyard through Add Device sits in the private pcscd, the holder's
// real paired agent reaches it, and it sponsors the enrolment. In the browser: a wrong PIN is
// verified on the card and shown with the tries left; the right PIN leads to the QR code, which
// zbarimg (Debian zbar-tools) reads back from a screenshot of it and which equals the link shown
// as text. Another user's card, and the holder's card after an operator revoked its certificate,
// are refused with the reason before any PIN is asked.

import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Page } from '@playwright/test';
import { test, expect } from '../support/lanyard';
import { Agent, CardRig, Session, until } from '../support/rig';

const PIN = '97531864';
const WRONG_PIN = '20241357';
/** The holder's card, issued to dana. */
const DANA = 0;
/** Omar's card, issued to him before dana's agent runs. */
const OMAR = 1;

let rig: CardRig;
let dana: Session;
let danaAgent: Agent;

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

/** Waits until dana's agent reports card `k`, and no session on it. */
async function cardReady(k: number) {
  await rig.agentReports(dana, danaAgent, rig.readerName(k));
  await until(`card ${k} idle`, async () => {
    const agents = (await rig.ok('GET', '/api/v1/agents', undefined, dana)) as any[];
    const a = agents.find((x) => x.id === danaAgent.id);
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
  const omarAgent = await rig.agentFor('omar', 'omar-desk');
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

test('the right PIN leads to the QR code, and zbarimg reads the link the page shows', async ({ page, check }) => {
  test.setTimeout(180_000);
  const zbar = zbarimg();
  await cardReady(DANA);
  await rig.signIn(page, 'dana');
  await presentCard(page);
  await page.getByLabel('PIN', { exact: true }).fill(PIN);
  await page.getByRole('button', { name: 'Verify' }).click();
  await expect(page.getByRole('heading', { name: 'Your card is verified' })).toBeVisible({ timeout: 60_000 });
  await check('derived-verified');
  await page.getByRole('button', { name: 'Show the enrolment code' }).click();
  await expect(page.getByRole('heading', { name: 'Scan this with the app' })).toBeVisible();
  await check('derived-code');

  const link = (await page.locator('#enrol-link').innerText()).trim();
  expect(link).toMatch(new RegExp(`^${rig.baseURL.replace(/[.]/g, '\\.')}/m/[A-Za-z0-9_-]+$`));
  const shot = path.join(rig.work, 'derived-qr.png');
  await page.locator('#enrol-qr svg').screenshot({ path: shot });
  const read = execFileSync(zbar, ['--quiet', '--raw', shot], { stdio: 'pipe' }).toString().trim();
  expect(read).toBe(link);
  fs.writeFileSync(path.join(rig.work, 'derived-link.txt'), link);

  // The proof gives one code: its page now says so, and posting again is refused.
  const session = page.url();
  await page.goto(session.replace(/\/code$/, ''));
  await expect(page.locator('main')).toContainText('has given its enrolment code already');
  await check('derived-spent');
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
