import { test, expect, signIn } from '../support/lanyard';

test('My Devices shows the card an operator registered, with its state and certificate', async ({ page, lanyard, check }) => {
  await signIn(page, 'alice');
  await expect(page).toHaveURL(/\/portal\/devices$/);
  const card = page.getByRole('region', { name: 'YubiKey 5', exact: true });
  await expect(card.locator('.badge').first()).toHaveText('Issuing');
  await expect(card).toContainText('Smart card');
  await expect(card).toContainText('31415926');
  const row = card.getByRole('row', { name: /9C Digital Signature/ });
  await expect(row).toContainText('digital-signature');
  await expect(row).toContainText(lanyard.aliceCertSerial);
  await expect(row).toContainText(/\d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC/);
  await expect(page.getByRole('link', { name: 'Add Device' })).toBeVisible();
  await check('my-devices');

  await card.getByRole('link', { name: 'YubiKey 5' }).click();
  await expect(page).toHaveURL(new RegExp(`/portal/devices/${lanyard.aliceCard}$`));
  await expect(page.getByRole('heading', { level: 1 })).toHaveText('YubiKey 5');
  await expect(page.locator('dl.facts')).toContainText(lanyard.aliceCard);
  await check('device');
  // Reload and back keep working: the URLs are the pages.
  await page.reload();
  await expect(page.getByRole('heading', { level: 1 })).toHaveText('YubiKey 5');
  await page.goBack();
  await expect(page).toHaveURL(/\/portal\/devices$/);
});

test('at 375 px the pages fit the screen without sideways scrolling', async ({ page, lanyard, check }) => {
  await page.setViewportSize({ width: 375, height: 740 });
  await signIn(page, 'alice');
  const pages = [
    ['/portal/devices', 'my-devices-375'],
    [`/portal/devices/${lanyard.aliceCard}`, 'device-375'],
    ['/portal/devices/new', 'add-device-375'],
    ['/portal/workstations', 'workstations-375'],
    ['/portal/help', 'troubleshooting-375'],
  ];
  for (const [url, name] of pages) {
    await page.goto(url);
    const width = await page.evaluate(() => document.documentElement.scrollWidth);
    expect(width, `${url} is ${width} px wide`).toBeLessThanOrEqual(375);
    await check(name);
  }
});

test("another user opening that device's address gets the same 404 as for no device", async ({ page, lanyard, check, allowConsole }) => {
  allowConsole(/status of 404/);
  await signIn(page, 'bob');
  await expect(page).toHaveURL(/\/portal\/devices$/);
  await expect(page.getByText('You hold no devices yet.')).toBeVisible();
  const theirs = await page.goto(`/portal/devices/${lanyard.aliceCard}`);
  expect(theirs!.status()).toBe(404);
  const theirsText = await page.locator('main').innerText();
  expect(theirsText).toContain('Page not found');
  expect(theirsText).not.toContain('YubiKey');
  expect(theirsText).not.toContain('31415926');
  await check('device-not-found');
  const none = await page.goto('/portal/devices/00000000-0000-4000-8000-000000000000');
  expect(none!.status()).toBe(404);
  const opless = (t: string) => t.replace(/[0-9a-f]{8}-[0-9a-f-]{27}/g, '<operation id>');
  expect(opless(await page.locator('main').innerText())).toBe(opless(theirsText));
  // The API agrees, for the same session.
  const api = await page.request.get(`/api/v1/devices/${lanyard.aliceCard}`);
  expect(api.status()).toBe(404);
});
