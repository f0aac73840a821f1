// The help desk issues a card in person, with real processes (support/rig.ts): an operator
// without the cardholder role pairs the agent at their desk from My Workstations (the code the
// portal shows, `lanyard agent pair`, `lanyard agent run` on the rig's private pcscd), finds the
// holder, issues the virtual card in the desk's reader to them, and the holder types the PIN at
// the Change PIN step in the operator's browser; the card is Active, opens with that PIN
// (pkcs11-tool), and the holder then sees it on My Devices.

import { test, expect } from '../support/lanyard';
import { Agent, CardRig, Session } from '../support/rig';

const HOLDER_PIN = '52719384';
const NOTE = 'In person, ID card checked (ticket 9921)';

let rig: CardRig;
let agent: Agent;
let olive: Session;

test.beforeAll(async ({ lanyard }) => {
  rig = await CardRig.start(lanyard.bin, { cards: 1 });
  rig.addUser({ username: 'olive', displayName: 'Olive Operator', roles: ['operator'] });
  rig.addUser({ username: 'hanna', displayName: 'Hanna Holder' });
  olive = await rig.login('olive');
});

test.afterAll(async () => {
  if (rig) await rig.stop();
});

test('an operator issues a card in person on the agent at their desk, and the holder types the PIN', async ({ page, check }) => {
  test.setTimeout(240_000);
  const reader = rig.readerName(0);
  const serial = String(rig.cardSerial(0));

  // The operator has My Workstations (but no My Devices) and pairs the agent at the desk.
  await rig.signIn(page, 'olive');
  const nav = page.getByRole('navigation', { name: 'Main' });
  await expect(nav.getByRole('link', { name: 'My Devices' })).toHaveCount(0);
  await nav.getByRole('link', { name: 'My Workstations' }).click();
  await expect(page.getByRole('heading', { name: 'My Workstations', level: 1 })).toBeVisible();
  await page.getByRole('button', { name: 'Show a pairing code' }).click();
  const code = (await page.locator('#pairing .code').innerText()).trim();
  agent = rig.runAgent(rig.pairAgent(code, 'help-desk-1'));
  await rig.agentReports(olive, agent, reader);

  // Help Desk → the holder → Issue a card in person.
  await nav.getByRole('link', { name: 'Help Desk' }).click();
  await page.getByLabel('Find a user or device').fill('hanna');
  await page.getByRole('button', { name: 'Search' }).click();
  await page.getByRole('link', { name: 'hanna' }).first().click();
  await expect(page.getByRole('heading', { name: 'Hanna Holder', level: 1 })).toBeVisible();
  await page.getByRole('link', { name: 'Issue a card in person' }).click();
  await expect(page.getByRole('heading', { name: 'Issue a card in person to Hanna Holder' })).toBeVisible();
  await expect(page.getByRole('heading', { name: 'Issue this card to hanna?' })).toBeVisible();
  const facts = page.locator('section[aria-labelledby="choose"] dl.facts');
  await expect(facts).toContainText(serial);
  await expect(facts).toContainText(`${reader} on help-desk-1`);
  await page.getByLabel('Note for the audit log').fill(NOTE);
  await check('operator-issue-in-person');
  await page.getByRole('button', { name: 'Issue to hanna' }).click();

  // The session's page: progress, then Change PIN, typed by the holder at the desk.
  await expect(page).toHaveURL(/\/portal\/jobs\/[0-9a-f-]+$/);
  await expect(page.getByRole('heading', { name: 'Card session', level: 1 })).toBeVisible();
  await expect(page.locator('main')).toContainText('The card of Hanna Holder (hanna), at your workstation');
  await expect(page.getByRole('heading', { name: 'Choose your new PIN' })).toBeVisible({ timeout: 120_000 });
  await check('operator-issue-pin');
  await page.getByLabel('New PIN', { exact: true }).fill(HOLDER_PIN);
  await page.getByLabel('New PIN again').fill(HOLDER_PIN);
  await page.getByRole('button', { name: 'Set PIN' }).click();
  await expect(page.getByRole('heading', { name: 'Your device is ready' })).toBeVisible({ timeout: 60_000 });
  await page.getByRole('link', { name: 'See the device' }).click();
  await expect(page).toHaveURL(/\/portal\/operator\/devices\/[0-9a-f-]+$/);
  await expect(page.locator('#state-badge')).toHaveText('Active');
  await expect(page.locator('main')).toContainText('Hanna Holder (hanna)');
  await expect(page.locator('main')).toContainText(NOTE);
  await check('operator-issued-device');

  // The PIN the holder typed opens the card.
  await expect.poll(() => {
    try {
      rig.pkcs11(['--login', '--pin', HOLDER_PIN, '--list-objects', '--type', 'cert']);
      return 'opened';
    } catch {
      return 'not yet';
    }
  }, { timeout: 30_000 }).toBe('opened');

  // The holder signs in and finds the card on My Devices.
  await page.getByRole('button', { name: 'Sign out' }).click();
  await rig.signIn(page, 'hanna');
  await page.goto(`${rig.baseURL}/portal/devices`);
  const row = page.locator('main').getByText(serial);
  await expect(row).toBeVisible();
  await expect(page.locator('main')).toContainText('Active');
  await check('operator-issued-holder-devices');

  // The audit log names the operator as actor and hanna's device.
  const hanna = await rig.login('hanna');
  const devices = (await rig.ok('GET', '/api/v1/devices', undefined, hanna)) as Array<{ id: string; serial: string; state: string }>;
  expect(devices.map((d) => [d.serial, d.state])).toEqual([[serial, 'active']]);
  const admin = await rig.login('admin', rig.adminPassword);
  const events = (await rig.ok('GET', '/api/v1/audit?limit=1000', undefined, admin)) as Array<any>;
  const begin = events.find((e) => e.action === 'device.begin_issuance' && e.target === `device:${devices[0].id}`);
  expect(begin.actor.username).toBe('olive');
  expect(begin.after.note).toBe(NOTE);
});
