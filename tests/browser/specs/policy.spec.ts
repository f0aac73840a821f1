import { test, expect, signIn } from '../support/lanyard';

/** The session's CSRF token, as the page's forms carry it. */
async function csrf(page: import('@playwright/test').Page) {
  return page.locator('input[name="csrf_token"]').first().getAttribute('value');
}

test('Add Device is disabled with the reason when the group may not add cards, and the API refuses too', async ({ page, check, allowConsole }) => {
  allowConsole(/status of 403/);
  await signIn(page, 'carol');
  await expect(page).toHaveURL(/\/portal\/devices$/);
  const add = page.getByRole('button', { name: 'Add Device' });
  await expect(add).toBeDisabled();
  await expect(add).toHaveAccessibleDescription(/does not allow adding a smart card or USB key/);
  await expect(page.getByText("You cannot add a device now: your group's policy does not allow adding a smart card or USB key.")).toBeVisible();
  await check('add-device-disabled');

  const token = await csrf(page);
  const refused = await page.request.post('/api/v1/issuance', {
    headers: { 'x-csrf-token': token! },
    data: { kind: 'smart_card', model: 'YubiKey 5', serial: '99999999' },
  });
  expect(refused.status()).toBe(403);
  expect((await refused.json()).error).toContain('does not allow adding a smart card or USB key');

  // The Add Device page says the same and offers nothing to start.
  await page.goto('/portal/devices/new');
  await expect(page.getByRole('alert')).toContainText('does not allow adding a smart card or USB key');
  await expect(page.getByRole('button', { name: 'Show a pairing code' })).toHaveCount(0);
  await check('add-device-refused');
});

test('Add Device is disabled at the device limit, naming the limit', async ({ page }) => {
  await signIn(page, 'dana');
  await expect(page).toHaveURL(/\/portal\/devices$/);
  await expect(page.getByRole('button', { name: 'Add Device' })).toBeDisabled();
  await expect(page.getByText("your group's policy allows at most 1 smart cards or USB keys, and you have 1")).toBeVisible();
});

test('Add Device explains the next step and the accepted models when allowed', async ({ page, check }) => {
  await signIn(page, 'alice');
  await page.getByRole('link', { name: 'Add Device' }).click();
  await expect(page).toHaveURL(/\/portal\/devices\/new$/);
  await expect(page.getByRole('heading', { level: 1 })).toHaveText('Add Device');
  await expect(page.getByText('A card or key of a model your group accepts')).toContainText('YubiKey 5, Lanyard virtual card');
  // alice has no workstation paired: the first step is pairing one, with Refresh and Cancel.
  await expect(page.getByRole('heading', { name: 'Step 1: pair your workstation' })).toBeVisible();
  await expect(page.getByRole('button', { name: 'Show a pairing code' })).toBeVisible();
  await expect(page.getByRole('button', { name: 'Refresh' })).toBeVisible();
  await expect(page.getByRole('link', { name: 'Cancel' })).toHaveAttribute('href', '/portal/devices');
  await check('add-device');
});
