// A card pulled out in the middle of Add Device, with real processes (support/rig.ts): the group's
// policy puts RSA-2048 keys in every slot, and the rig pulls the card the moment it has generated
// the 9A key (vcard's APDU log shows GENERATE 9A answered), so the cut lands in the batch that
// rotates the management key and generates the remaining keys. The page shows the failure; the
// card goes back in; then Resume finishes on the first try (Active, the new PIN opens it), or
// Start over resets the card and the portal offers it as a fresh card again.
//
// Each test has a rig of its own, so they can be repeated (`--repeat-each`).

import { Page } from '@playwright/test';
import { test, expect } from '../support/lanyard';
import { Agent, CardRig, Session } from '../support/rig';

const NEW_PIN = '75318642';
/** GENERATE ASYMMETRIC KEY PAIR (INS 47) in slot 9A. */
const GENERATE_9A = '0047009a';

interface Pulled {
  rig: CardRig;
  agent: Agent;
  holder: Session;
  jobUrl: string;
}

let rig: CardRig | undefined;

test.afterEach(async () => {
  if (rig) await rig.stop();
  rig = undefined;
});

/** A rig with one card and an RSA-2048 group, Add Device started in the page, the card pulled
 *  after GENERATE 9A; answers once the page shows the failed session. */
async function pulledDuringIssuance(bin: string, page: Page, check: (n: string) => Promise<void>, shot: string): Promise<Pulled> {
  rig = await CardRig.start(bin, { cards: 1, traceApdus: true });
  await rig.addGroup('rsa', (policy) => {
    for (const slot of Object.values(policy.certificates) as Array<{ algorithm: string }>) slot.algorithm = 'rsa-2048';
  });
  rig.addUser({ username: 'gina', displayName: 'Gina Grant', group: 'rsa' });
  const agent = await rig.agentFor('gina', 'gina-desk');
  const holder = await rig.login('gina');
  await rig.agentReports(holder, agent, rig.readerName(0));

  await rig.signIn(page, 'gina');
  await page.goto(`${rig.baseURL}/portal/devices/new`);
  await expect(page.getByRole('button', { name: 'Issue this device' })).toBeVisible();
  const pulled = rig.removeAfterApdu(0, GENERATE_9A);
  await page.getByRole('button', { name: 'Issue this device' }).click();
  await pulled;
  await expect(page).toHaveURL(/\/portal\/jobs\/[0-9a-f-]+$/);
  const jobUrl = page.url();
  const job = jobUrl.split('/').pop()!;

  // The events move the page on to the failure, with Resume and Start over.
  await expect(page.getByRole('heading', { name: 'The session stopped' })).toBeVisible({ timeout: 60_000 });
  await expect(page.locator('main')).toContainText('What happened:');
  await expect(page.getByRole('button', { name: 'Resume' })).toBeVisible();
  await expect(page.getByRole('button', { name: 'Start over' })).toBeVisible();
  const failed = await rig.ok('GET', `/api/v1/jobs/${job}`, undefined, holder);
  expect(failed.state).toBe('failed');
  // The steps list shows where it stopped: the card identified, the batch that was cut (the new
  // management key and the keys) not finished, nothing written.
  await page.getByText('Steps on the card').click();
  const done = (await page.locator('.job-steps li.done').allInnerTexts()).join('; ');
  expect(done).toContain('Identifying the card');
  expect(done).not.toContain('Generating the card authentication key (slot 9E)');
  expect(done).not.toContain('Writing the certificates');
  await check(shot);

  // Back in the reader; the agent reports it, so Resume or Start over can find it.
  rig.insert(0);
  await rig.agentReports(holder, agent, rig.readerName(0));
  return { rig, agent, holder, jobUrl };
}

test('the card pulled during issuance: the page shows the failure, and Resume after reinserting it ends Active', async ({ page, lanyard, check }) => {
  test.setTimeout(240_000);
  const { rig, holder, jobUrl } = await pulledDuringIssuance(lanyard.bin, page, check, 'add-device-pulled');
  const job = jobUrl.split('/').pop()!;

  await page.getByRole('button', { name: 'Resume' }).click();
  await expect(page).toHaveURL(jobUrl);
  // A resumed session asks for the PIN again, and finishes on this first try.
  await expect(page.getByRole('heading', { name: 'Choose your new PIN' })).toBeVisible({ timeout: 120_000 });
  await page.getByLabel('New PIN', { exact: true }).fill(NEW_PIN);
  await page.getByLabel('New PIN again').fill(NEW_PIN);
  await page.getByRole('button', { name: 'Set PIN' }).click();
  await expect(page.getByRole('heading', { name: 'Your device is ready' })).toBeVisible({ timeout: 60_000 });
  await check('add-device-resumed');
  const done = await rig.ok('GET', `/api/v1/jobs/${job}`, undefined, holder);
  expect(done.state).toBe('succeeded');
  const devices = (await rig.ok('GET', '/api/v1/devices', undefined, holder)) as Array<{ serial: string; state: string }>;
  expect(devices.map((d) => [d.serial, d.state])).toEqual([[String(rig.cardSerial(0)), 'active']]);

  // The card holds an RSA-2048 key in 9A and opens with the PIN typed in the page.
  const objects = rig.pkcs11(['--login', '--pin', NEW_PIN, '--list-objects', '--type', 'pubkey']);
  expect(objects).toMatch(/RSA 2048/);
  expect(() => rig.pkcs11(['--login', '--pin', '123456', '--list-objects'])).toThrow();
});

test('the card pulled during issuance: Start over after reinserting it resets the card, offered as fresh again', async ({ page, lanyard, check }) => {
  test.setTimeout(240_000);
  const { rig, holder, jobUrl } = await pulledDuringIssuance(lanyard.bin, page, check, 'add-device-pulled-start-over');
  const job = jobUrl.split('/').pop()!;

  await page.getByRole('button', { name: 'Start over' }).click();
  await expect(page).toHaveURL(jobUrl);
  await expect(page.getByRole('heading', { name: 'Undone' })).toBeVisible({ timeout: 120_000 });
  await check('add-device-started-over');
  const undone = await rig.ok('GET', `/api/v1/jobs/${job}`, undefined, holder);
  expect(undone.state).not.toBe('failed');
  // The device is not left in use.
  const devices = (await rig.ok('GET', '/api/v1/devices', undefined, holder)) as Array<{ state: string }>;
  expect(devices.filter((d) => d.state === 'active' || d.state === 'pending')).toEqual([]);
  // Factory state: the default PIN opens it, and Add Device offers it as a card to issue.
  rig.pkcs11(['--login', '--pin', '123456', '--list-objects']);
  await rig.agentReports(holder, (await rig.ok('GET', '/api/v1/agents', undefined, holder))[0], rig.readerName(0));
  await page.getByRole('link', { name: 'Add Device' }).click();
  await expect(page.getByRole('button', { name: 'Issue this device' })).toBeVisible();
  await expect(page.locator('main dl.facts')).toContainText(String(rig.cardSerial(0)));
});
