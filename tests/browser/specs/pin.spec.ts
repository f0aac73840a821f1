// Change PIN and Unlock PIN end to end with real processes (support/rig.ts): a card issued through
// Add Device, then, in the browser, Change PIN from the device's page (the page finds the card in
// the agent's reader, asks for the current and the new PIN) — OpenSC logs in with the new PIN and
// no longer with the old one; then the PIN is blocked with wrong PINs through OpenSC, Change PIN
// says so and leads to Unlock PIN, which sets a new PIN typed in the page — and OpenSC signs with it.

import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Page } from '@playwright/test';
import { test, expect } from '../support/lanyard';
import { Agent, CardRig, Session } from '../support/rig';

const FIRST_PIN = '97531864';
const SECOND_PIN = '86420975';
const THIRD_PIN = '53197520';
const WRONG_PIN = '20241357';

let rig: CardRig;
let agent: Agent;
let gina: Session;
/** The device page of the card the first test issues. */
let devicePage = '';

// Each test goes on with the card the one before left.
test.describe.configure({ mode: 'serial' });

test.beforeAll(async ({ lanyard }) => {
  rig = await CardRig.start(lanyard.bin, { cards: 1 });
  rig.addUser({ username: 'gina', displayName: 'Gina Gray' });
  agent = await rig.agentFor('gina', 'gina-desk');
  gina = await rig.login('gina');
  await rig.agentReports(gina, agent, rig.readerName(0));
});

test.afterAll(async () => {
  if (rig) await rig.stop();
});

/** Whether OpenSC logs in to the card with `pin` (a wrong one uses up a try). */
function logsIn(pin: string): boolean {
  try {
    rig.pkcs11(['--login', '--pin', pin, '-O']);
    return true;
  } catch {
    return false;
  }
}

/** From the device's page: the PIN action `name`, Refresh until the page finds the card (the
 *  agent reports it again after each session), and its facts. */
async function openAction(page: Page, name: 'Change PIN' | 'Unlock PIN') {
  await page.goto(devicePage);
  await page.getByRole('link', { name }).click();
  await expect(page.getByRole('heading', { level: 1 })).toHaveText(name);
  await expect(async () => {
    if (!(await page.getByRole('button', { name: 'Start' }).isVisible())) {
      await page.getByRole('button', { name: 'Refresh' }).click();
    }
    await expect(page.getByRole('button', { name: 'Start' })).toBeVisible({ timeout: 1000 });
  }).toPass({ timeout: 60_000 });
  const facts = page.locator('main dl.facts');
  await expect(facts).toContainText(rig.readerName(0));
  await expect(facts).toContainText('gina-desk');
  await expect(facts).toContainText(String(rig.cardSerial(0)));
  await expect(page.getByRole('link', { name: 'Cancel' })).toBeVisible();
}

test('a card issued through Add Device offers Change PIN and Unlock PIN on its page', async ({ page, check }) => {
  test.setTimeout(240_000);
  await rig.signIn(page, 'gina');
  await page.goto(`${rig.baseURL}/portal/devices/new`);
  await expect(async () => {
    await page.getByRole('button', { name: 'Refresh' }).click();
    await expect(page.getByRole('button', { name: 'Issue this device' })).toBeVisible({ timeout: 1000 });
  }).toPass({ timeout: 60_000 });
  await page.getByRole('button', { name: 'Issue this device' }).click();
  await expect(page.getByRole('heading', { name: 'Choose your new PIN' })).toBeVisible({ timeout: 120_000 });
  await page.getByLabel('New PIN', { exact: true }).fill(FIRST_PIN);
  await page.getByLabel('New PIN again').fill(FIRST_PIN);
  await page.getByRole('button', { name: 'Set PIN' }).click();
  await expect(page.getByRole('heading', { name: 'Your device is ready' })).toBeVisible({ timeout: 60_000 });
  await page.getByRole('link', { name: 'See the device' }).click();
  devicePage = page.url();
  await expect(page.getByRole('heading', { name: 'PIN' })).toBeVisible();
  await expect(page.getByRole('link', { name: 'Change PIN' })).toBeVisible();
  await expect(page.getByRole('link', { name: 'Unlock PIN' })).toBeVisible();
  await check('device-pin-actions');
});

test('Change PIN in the portal: OpenSC logs in with the new PIN, and the old one fails', async ({ page, check }) => {
  test.setTimeout(240_000);
  expect(devicePage, 'the first test issues the card').not.toBe('');
  await rig.signIn(page, 'gina');
  await openAction(page, 'Change PIN');
  await check('pin-change-card');
  await page.getByRole('button', { name: 'Start' }).click();
  await expect(page).toHaveURL(/\/portal\/jobs\/[0-9a-f-]+$/);
  await expect(page.getByRole('heading', { name: 'Your current PIN and a new one' })).toBeVisible({ timeout: 60_000 });
  // The page checks as the PINs are typed: the current one is needed, the new one must differ.
  await page.getByLabel('New PIN', { exact: true }).fill(SECOND_PIN);
  await expect(page.locator('#pin-check')).toHaveText('Type your current PIN.');
  await page.getByLabel('Current PIN', { exact: true }).fill(SECOND_PIN);
  await page.getByLabel('New PIN again').fill(SECOND_PIN);
  await expect(page.locator('#pin-check')).toHaveText('The new PIN is the same as the current one: choose another.');
  await page.getByLabel('Current PIN', { exact: true }).fill(FIRST_PIN);
  await expect(page.locator('#pin-check')).toHaveText('This PIN meets the rules.');
  await check('pin-change-form');
  await page.getByRole('button', { name: 'Change PIN' }).click();
  await expect(page.getByRole('heading', { name: 'Your PIN is changed' })).toBeVisible({ timeout: 60_000 });
  await check('pin-changed');

  expect(logsIn(FIRST_PIN), 'the old PIN no longer opens the card').toBe(false);
  expect(logsIn(SECOND_PIN), 'the new PIN does').toBe(true);
});

test('a blocked PIN: Change PIN says so and leads to Unlock PIN, whose new PIN OpenSC signs with', async ({ page, check }) => {
  test.setTimeout(240_000);
  expect(devicePage, 'the first test issues the card').not.toBe('');
  // Wrong PINs until the card blocks it (three tries): then not even the right PIN opens it.
  for (let i = 0; i < 3; i++) expect(logsIn(WRONG_PIN)).toBe(false);
  expect(logsIn(SECOND_PIN), 'the PIN is blocked').toBe(false);

  await rig.signIn(page, 'gina');
  await openAction(page, 'Change PIN');
  await page.getByRole('button', { name: 'Start' }).click();
  await expect(page.getByRole('heading', { name: 'The PIN is blocked' })).toBeVisible({ timeout: 60_000 });
  await check('pin-blocked');
  await page.getByRole('link', { name: 'Unlock PIN' }).click();
  await expect(page.getByRole('heading', { level: 1 })).toHaveText('Unlock PIN');
  await expect(async () => {
    if (!(await page.getByRole('button', { name: 'Start' }).isVisible())) {
      await page.getByRole('button', { name: 'Refresh' }).click();
    }
    await expect(page.getByRole('button', { name: 'Start' })).toBeVisible({ timeout: 1000 });
  }).toPass({ timeout: 60_000 });
  await page.getByRole('button', { name: 'Start' }).click();
  await expect(page.getByRole('heading', { name: 'Choose your new PIN' })).toBeVisible({ timeout: 60_000 });
  await expect(page.getByLabel('Current PIN', { exact: true })).toHaveCount(0);
  await page.getByLabel('New PIN', { exact: true }).fill(THIRD_PIN);
  await page.getByLabel('New PIN again').fill(THIRD_PIN);
  await page.getByRole('button', { name: 'Unlock with this PIN' }).click();
  await expect(page.getByRole('heading', { name: 'Your PIN is unlocked' })).toBeVisible({ timeout: 60_000 });
  await check('pin-unlocked');

  // OpenSC signs with slot 9A under the new PIN, and the signature verifies with 9A's certificate.
  const data = path.join(rig.work, 'unlocked.txt');
  fs.writeFileSync(data, 'signed after Unlock PIN in the portal');
  rig.pkcs11(['--login', '--pin', THIRD_PIN, '--sign', '--id', '01', '-m', 'ECDSA-SHA256',
    '--signature-format', 'openssl', '-i', data, '-o', path.join(rig.work, 'unlocked.sig')]);
  rig.pkcs11(['--read-object', '--type', 'cert', '--id', '01', '-o', path.join(rig.work, 'unlocked-9a.der')]);
  execFileSync('openssl', ['x509', '-inform', 'DER', '-in', path.join(rig.work, 'unlocked-9a.der'), '-pubkey', '-noout',
    '-out', path.join(rig.work, 'unlocked-9a.pub')], { stdio: 'pipe' });
  const verified = execFileSync('openssl', ['dgst', '-sha256', '-verify', path.join(rig.work, 'unlocked-9a.pub'),
    '-signature', path.join(rig.work, 'unlocked.sig'), data], { stdio: 'pipe' }).toString();
  expect(verified).toContain('Verified OK');
});
