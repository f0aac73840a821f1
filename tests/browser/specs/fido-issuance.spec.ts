// Add Device with a FIDO PIN policy (DESIGN flow B), end to end with the card rig (its own
// `lanyard serve`, pcscd, virtual cards and paired agents). Under `independent` the job page asks
// for the key's FIDO PIN before the device PIN, saying which PIN is used where, and refuses one
// under the policy's minimum; under `shared` the device-PIN step shows the temporary FIDO PIN with
// a Copy button. Each page passes the `check` fixture (CSP, console, axe WCAG A/AA). The PIN on
// each key is judged by python-fido2 in crates/lanyard/tests/interop.rs.

import { test, expect } from '../support/lanyard';
import { CardRig } from '../support/rig';

let rig: CardRig;

test.describe.configure({ mode: 'serial' });

test.beforeAll(async ({ lanyard }) => {
  // Two factory-fresh cards; the second waits outside its reader for the second test.
  rig = await CardRig.start(lanyard.bin, { cards: 2, inserted: [0] });
  await rig.addGroup('fido-own', (p) => { p.fido_pin_mode = 'independent'; p.fido_min_pin_length = 8; });
  await rig.addGroup('fido-shared', (p) => { p.fido_pin_mode = 'shared'; p.fido_min_pin_length = 6; });
  rig.addUser({ username: 'fay', displayName: 'Fay Foster', group: 'fido-own' });
  rig.addUser({ username: 'gus', displayName: 'Gus Green', group: 'fido-shared' });
});

test.afterAll(async () => {
  if (rig) await rig.stop();
});

/** Signs `user` in, pairs and runs an agent for them, and starts Add Device on reader `k`. */
async function startIssuance(page: import('@playwright/test').Page, user: string, k: number) {
  const agent = await rig.agentFor(user, `${user}-desk`);
  await rig.agentReports(await rig.login(user), agent, rig.readerName(k));
  await rig.signIn(page, user);
  await page.goto(`${rig.baseURL}/portal/devices/new`);
  await expect(async () => {
    await page.getByRole('button', { name: 'Refresh' }).click();
    await expect(page.getByRole('button', { name: 'Issue this device' })).toBeVisible({ timeout: 1000 });
  }).toPass({ timeout: 60_000 });
  await page.getByRole('button', { name: 'Issue this device' }).click();
  await expect(page).toHaveURL(/\/portal\/jobs\/[0-9a-f-]+$/);
}

test('independent: the holder chooses the FIDO PIN first, then the device PIN', async ({ page, check, allowConsole }) => {
  test.setTimeout(240_000);
  allowConsole(/status of 400/);
  await startIssuance(page, 'fay', 0);
  await expect(page.getByRole('heading', { name: "Choose your key's FIDO PIN" })).toBeVisible({ timeout: 120_000 });
  await expect(page.locator('main')).toContainText('unlocks the key\'s passkeys');
  await expect(page.locator('main')).toContainText('at least 8 characters');
  await check('fido-pin-independent');
  const jobUrl = page.url();
  // Under the minimum: the server refuses it and the session waits on.
  await page.getByLabel('FIDO PIN', { exact: true }).fill('short');
  await page.getByLabel('FIDO PIN again').fill('short');
  await page.getByRole('button', { name: 'Set FIDO PIN' }).click();
  await expect(page.getByRole('alert')).toContainText('at least 8 characters');
  await expect(page.getByRole('heading', { name: "Choose your key's FIDO PIN" })).toBeVisible();
  // Two different entries are refused before anything is sent.
  await page.getByLabel('FIDO PIN', { exact: true }).fill('a long FIDO PIN');
  await page.getByLabel('FIDO PIN again').fill('another one');
  await page.getByRole('button', { name: 'Set FIDO PIN' }).click();
  await expect(page.getByRole('alert')).toContainText('The two PINs differ');
  await page.getByLabel('FIDO PIN', { exact: true }).fill('a long FIDO PIN');
  await page.getByLabel('FIDO PIN again').fill('a long FIDO PIN');
  await page.getByRole('button', { name: 'Set FIDO PIN' }).click();
  await page.goto(jobUrl);
  await expect(page.getByRole('heading', { name: 'Choose your new PIN' })).toBeVisible({ timeout: 60_000 });
  await page.getByLabel('New PIN', { exact: true }).fill('97531864');
  await page.getByLabel('New PIN again').fill('97531864');
  await page.getByRole('button', { name: 'Set PIN' }).click();
  await expect(page.getByRole('heading', { name: 'Your device is ready' })).toBeVisible({ timeout: 60_000 });
  await check('fido-independent-done');
});

test('shared: the device-PIN step shows the temporary FIDO PIN with a Copy button', async ({ page, check }) => {
  test.setTimeout(240_000);
  rig.remove(0);
  rig.insert(1);
  await startIssuance(page, 'gus', 1);
  await expect(page.getByRole('heading', { name: 'Choose your new PIN' })).toBeVisible({ timeout: 120_000 });
  await expect(page.getByRole('heading', { name: 'Temporary FIDO PIN' })).toBeVisible();
  const temporary = (await page.locator('#fido-temp-pin').innerText()).trim();
  expect(temporary).toMatch(/^[0-9]{8}$/);
  await check('fido-pin-shared');
  await page.getByRole('button', { name: 'Copy' }).click();
  await expect(page.locator('#fido-temp-copied')).not.toBeEmpty();
  await page.getByLabel('New PIN', { exact: true }).fill('86420975');
  await page.getByLabel('New PIN again').fill('86420975');
  await page.getByRole('button', { name: 'Set PIN' }).click();
  await expect(page.getByRole('heading', { name: 'Your device is ready' })).toBeVisible({ timeout: 60_000 });
  // The temporary PIN is shown only while it is the key's.
  await expect(page.locator('main')).not.toContainText(temporary);
});
