// Add Device with real processes (support/rig.ts) when the cards are not simply there: no card
// inserted (the page asks for one, and Refresh finds it once `vcard insert` puts it in), and two
// cards at once (the page offers both, and the one chosen is the one issued).

import { test, expect } from '../support/lanyard';
import { Agent, CardRig, Session } from '../support/rig';

const NEW_PIN = '86420531';

let rig: CardRig;
let agent: Agent;
let frank: Session;

// The second test inserts the second card next to the first one's.
test.describe.configure({ mode: 'serial' });

test.beforeAll(async ({ lanyard }) => {
  // Two factory-fresh cards, both outside their readers at first.
  rig = await CardRig.start(lanyard.bin, { cards: 2, inserted: [] });
  rig.addUser({ username: 'frank', displayName: 'Frank Fisher' });
  agent = await rig.agentFor('frank', 'frank-desk');
  frank = await rig.login('frank');
  // The agent is online and has reported the empty reader.
  await rig.agentReports(frank, agent, rig.readerName(0), false);
});

test.afterAll(async () => {
  if (rig) await rig.stop();
});

test('no card in the reader: the page asks to insert one, and Refresh finds it once inserted', async ({ page, check }) => {
  test.setTimeout(120_000);
  await rig.signIn(page, 'frank');
  await page.getByRole('link', { name: 'Add Device' }).click();
  await expect(page.getByRole('heading', { name: 'Step 2: insert your device' })).toBeVisible();
  await expect(page.locator('main')).toContainText('Insert the card or USB key into frank-desk, then choose Refresh.');
  await expect(page.getByRole('button', { name: 'Issue this device' })).toHaveCount(0);
  await expect(page.getByRole('button', { name: 'Refresh' })).toBeVisible();
  await check('add-device-insert');

  rig.insert(0);
  // Refresh once the agent has reported the inserted card to the server.
  await rig.agentReports(frank, agent, rig.readerName(0));
  await page.getByRole('button', { name: 'Refresh' }).click();
  await expect(page.getByRole('heading', { name: 'Step 2: issue this device' })).toBeVisible();
  const facts = page.locator('main dl.facts');
  await expect(facts).toContainText(`${rig.readerName(0)} on frank-desk`);
  await expect(facts).toContainText(String(rig.cardSerial(0)));
  await expect(page.getByRole('button', { name: 'Issue this device' })).toBeVisible();
  await check('add-device-inserted');
});

test('two cards: the page offers both, and the one chosen is the one issued', async ({ page, check }) => {
  test.setTimeout(240_000);
  const [first, second] = [0, 1].map((k) => ({ reader: rig.readerName(k), serial: String(rig.cardSerial(k)) }));
  expect(first.serial).not.toBe(second.serial);
  rig.insert(1);
  await rig.agentReports(frank, agent, second.reader);

  await rig.signIn(page, 'frank');
  await page.goto(`${rig.baseURL}/portal/devices/new`);
  await expect(page.getByRole('heading', { name: 'Step 2: choose the device to issue' })).toBeVisible();
  const choices = page.getByRole('group', { name: 'Inserted devices that can be issued' }).getByRole('radio');
  await expect(choices).toHaveCount(2);
  const firstChoice = page.getByLabel(`YubiKey 5, serial ${first.serial}, in ${first.reader} on frank-desk`);
  const secondChoice = page.getByLabel(`YubiKey 5, serial ${second.serial}, in ${second.reader} on frank-desk`);
  await expect(firstChoice).toBeChecked();
  await expect(secondChoice).not.toBeChecked();
  await check('add-device-choose');

  // The second card, not the one chosen by default.
  await secondChoice.check();
  await page.getByRole('button', { name: 'Next' }).click();
  await expect(page).toHaveURL(/\/portal\/jobs\/[0-9a-f-]+$/);
  await expect(page.getByRole('heading', { name: 'Choose your new PIN' })).toBeVisible({ timeout: 120_000 });
  await page.getByLabel('New PIN', { exact: true }).fill(NEW_PIN);
  await page.getByLabel('New PIN again').fill(NEW_PIN);
  await page.getByRole('button', { name: 'Set PIN' }).click();
  await expect(page.getByRole('heading', { name: 'Your device is ready' })).toBeVisible({ timeout: 60_000 });
  await page.getByRole('link', { name: 'See the device' }).click();
  await expect(page.locator('main .badge').first()).toHaveText('Active');
  await expect(page.locator('main')).toContainText(second.serial);
  await expect(page.locator('main')).not.toContainText(first.serial);
  await check('add-device-chosen-issued');

  // The server recorded the chosen card, and the agent now reports that reader's card as issued
  // while the other is still offered.
  const devices = (await rig.ok('GET', '/api/v1/devices', undefined, frank)) as Array<{ serial: string; state: string }>;
  expect(devices.map((d) => [d.serial, d.state])).toEqual([[second.serial, 'active']]);
  await page.goto(`${rig.baseURL}/portal/devices/new`);
  await expect(page.getByRole('heading', { name: 'Step 2: issue this device' })).toBeVisible();
  await expect(page.locator('main dl.facts')).toContainText(`${first.reader} on frank-desk`);
  await expect(page.locator('main dl.facts')).toContainText(first.serial);
  await expect(page.getByText(`${second.reader} on frank-desk: this card has been issued already.`)).toBeVisible();
  await check('add-device-one-left');
});
