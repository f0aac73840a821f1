import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import { test, expect, signIn } from '../support/lanyard';
import { lanyardEnv } from '../support/serve';

test('a workstation paired with the code the page shows is listed, and can be revoked after confirming', async ({ page, lanyard, check, allowConsole }) => {
  allowConsole(/status of 404/);
  await signIn(page, 'alice');
  await page.getByRole('link', { name: 'My Workstations' }).click();
  await expect(page.getByRole('heading', { level: 1 })).toHaveText('My Workstations');
  await expect(page.getByText('No workstation is paired with your account yet.')).toBeVisible();
  await check('workstations-empty');

  // htmx swaps the code into the page (the header carries the CSRF token).
  await page.getByRole('button', { name: 'Show a pairing code' }).click();
  const code = page.locator('#pairing .code');
  await expect(code).toHaveText(/^[0-9A-Z]{5}-[0-9A-Z]{5}$/);
  await expect(page).toHaveURL(/\/portal\/workstations$/);
  await expect(page.getByRole('link', { name: 'pair this workstation with Lanyard' })).toHaveAttribute('href', /^lanyard:\/\/pair\?/);
  await check('pairing-code');

  // The real agent CLI redeems it.
  execFileSync(lanyard.bin, ['agent', 'pair', '--server', lanyard.baseURL, '--ca-cert', lanyard.rootCert,
    '--host-name', 'alice-laptop', (await code.innerText()).trim()], {
    env: lanyardEnv({ LANYARD_AGENT_CONFIG: path.join(lanyard.dir, 'agent-alice.json') }),
    stdio: 'pipe',
  });
  await page.reload();
  const row = page.getByRole('row', { name: /alice-laptop/ });
  await expect(row).toContainText('Paired');
  await check('workstations');

  // Another user never sees it.
  const agentId = (await row.getByRole('link', { name: /Revoke/ }).getAttribute('href'))!.split('/')[3];

  await row.getByRole('link', { name: 'Revoke alice-laptop' }).click();
  await expect(page.getByRole('heading', { level: 1 })).toHaveText('Revoke workstation alice-laptop?');
  await check('revoke-confirm');
  await page.getByRole('link', { name: 'Cancel' }).click();
  await expect(page.getByRole('row', { name: /alice-laptop/ })).toContainText('Paired');
  await page.getByRole('link', { name: 'Revoke alice-laptop' }).click();
  await page.getByRole('button', { name: 'Revoke alice-laptop' }).click();
  await expect(page).toHaveURL(new RegExp(`/portal/workstations\\?revoked=${agentId}$`));
  await expect(page.getByRole('status')).toContainText('Workstation alice-laptop is revoked');
  await expect(page.getByRole('row', { name: /alice-laptop/ })).toContainText('Revoked');
  await check('workstation-revoked');

  await page.getByRole('button', { name: 'Sign out' }).click();
  await signIn(page, 'bob');
  const theirs = await page.goto(`/portal/workstations/${agentId}/revoke`);
  expect(theirs!.status()).toBe(404);
  expect(await page.locator('main').innerText()).not.toContain('alice-laptop');
});

test.describe('without JavaScript', () => {
  test.use({ javaScriptEnabled: false });

  test('the pairing form still works, as a page of its own', async ({ page }) => {
    await signIn(page, 'bob');
    await expect(page).toHaveURL(/\/portal\/devices$/);
    await page.goto('/portal/workstations');
    await page.getByRole('button', { name: 'Show a pairing code' }).click();
    await expect(page).toHaveURL(/\/portal\/workstations\/pairing$/);
    await expect(page.getByRole('heading', { level: 1 })).toHaveText('Pair a workstation');
    await expect(page.locator('.code')).toHaveText(/^[0-9A-Z]{5}-[0-9A-Z]{5}$/);
  });
});

test('the pairing page that plain forms get passes the accessibility check', async ({ page, check }) => {
  await signIn(page, 'bob');
  await page.goto('/portal/devices/new');
  // form.submit() skips htmx's submit handler: the browser posts the form itself.
  await Promise.all([page.waitForURL(/\/portal\/workstations\/pairing$/), page.locator('#pairing form').evaluate((f: HTMLFormElement) => f.submit())]);
  await expect(page.locator('.code')).toHaveText(/^[0-9A-Z]{5}-[0-9A-Z]{5}$/);
  await check('pairing-page');
});
