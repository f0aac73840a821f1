// An agent paired to one user is never offered to another, with real processes (support/rig.ts):
// Alice's agent runs and reports her factory-fresh card, and Bob, signed in at the same time,
// sees neither the agent nor its reader in Add Device or My Workstations, and the API answers 404
// when he aims a card session of his own at Alice's agent. The same request at an agent of his own
// is taken, so the 404 is about whose agent it is, not about the request.

import { test, expect } from '../support/lanyard';
import { Agent, CardRig } from '../support/rig';

let rig: CardRig;
let alices: Agent;

test.beforeAll(async ({ lanyard }) => {
  rig = await CardRig.start(lanyard.bin, { cards: 1 });
  rig.addUser({ username: 'alice', displayName: 'Alice Archer' });
  rig.addUser({ username: 'bob', displayName: 'Bob Baker' });
  alices = await rig.agentFor('alice', 'alice-desk');
  await rig.agentReports(await rig.login('alice'), alices, rig.readerName(0));
});

test.afterAll(async () => {
  if (rig) await rig.stop();
});

test('Bob is never offered Alice\'s agent or her card: not in Add Device, My Workstations or the API', async ({ page, check, allowConsole }) => {
  test.setTimeout(120_000);
  allowConsole(/status of 404/);
  const reader = rig.readerName(0);
  const serial = String(rig.cardSerial(0));

  // Alice's Add Device offers her card, so the card and agent are there to be seen.
  await rig.signIn(page, 'alice');
  await page.goto(`${rig.baseURL}/portal/devices/new`);
  await expect(page.getByRole('button', { name: 'Issue this device' })).toBeVisible();
  await expect(page.locator('main dl.facts')).toContainText(`${reader} on alice-desk`);
  await expect(page.locator('main dl.facts')).toContainText(serial);
  await page.context().clearCookies();

  // Bob: no workstation of his, so Add Device asks him to pair one; nothing of Alice's shows.
  await rig.signIn(page, 'bob');
  await page.goto(`${rig.baseURL}/portal/devices/new`);
  await expect(page.getByRole('heading', { name: 'Step 1: pair your workstation' })).toBeVisible();
  await expect(page.getByText('No workstation is paired with your account yet.')).toBeVisible();
  for (const hidden of ['alice-desk', reader, serial, 'Issue this device']) {
    await expect(page.locator('main'), `Bob's Add Device shows ${hidden}`).not.toContainText(hidden);
  }
  await page.getByRole('button', { name: 'Refresh' }).click();
  await expect(page.getByRole('heading', { name: 'Step 1: pair your workstation' })).toBeVisible();
  await expect(page.locator('main')).not.toContainText('alice-desk');
  await check('isolation-bob-add-device');

  await page.goto(`${rig.baseURL}/portal/workstations`);
  await expect(page.getByText('No workstation is paired with your account yet.')).toBeVisible();
  await expect(page.locator('main')).not.toContainText('alice-desk');
  await check('isolation-bob-workstations');
  // Alice's agent's revoke page is Bob's 404.
  const revoke = await page.goto(`${rig.baseURL}/portal/workstations/${alices.id}/revoke`);
  expect(revoke!.status()).toBe(404);

  // The API: Bob's agents are none; a session of Bob's own job at Alice's agent is 404, and
  // so is asking it to refresh; nothing is started on her card.
  const bob = await rig.login('bob');
  expect(await rig.ok('GET', '/api/v1/agents', undefined, bob)).toEqual([]);
  const started = await rig.ok('POST', '/api/v1/issuance', { kind: 'usb_key', model: 'YubiKey 5', serial }, bob);
  const job = started.job.id as string;
  const body = { job, reader, purpose: 'run', new_pin_from: 'agent' };
  const aimed = await rig.request('POST', `/api/v1/agents/${alices.id}/sessions`, body, bob);
  expect(aimed.status, JSON.stringify(aimed.body)).toBe(404);
  expect((await rig.request('POST', `/api/v1/agents/${alices.id}/refresh`, {}, bob)).status).toBe(404);
  expect((await rig.ok('GET', `/api/v1/jobs/${job}`, undefined, bob)).state).toBe('created');
  const alice = await rig.login('alice');
  const hers = (await rig.ok('GET', '/api/v1/agents', undefined, alice)) as Array<{ id: string; online: boolean }>;
  expect(hers.map((a) => [a.id, a.online])).toEqual([[alices.id, true]]);

  // The same request at an agent Bob paired himself (on the same workstation) is taken.
  const bobs = await rig.agentFor('bob', 'bob-desk');
  await rig.agentReports(bob, bobs, reader);
  const own = await rig.request('POST', `/api/v1/agents/${bobs.id}/sessions`, body, bob);
  expect(own.status, JSON.stringify(own.body)).toBe(202);
  expect(own.body.agent).toBe(bobs.id);
});
