import { test, expect, signIn } from '../support/lanyard';

test('an operator finds a key by its serial pasted with spaces, suspends it with a note after confirming, and resumes it', async ({ page, lanyard, check }) => {
  await signIn(page, 'oscar');
  // An operator without the cardholder role lands on the help desk, and sees only its link.
  await expect(page).toHaveURL(/\/portal\/operator$/);
  const nav = page.getByRole('navigation', { name: 'Main' });
  await expect(nav.getByRole('link', { name: 'Help Desk' })).toHaveAttribute('aria-current', 'page');
  await expect(nav.getByRole('link', { name: 'My Devices' })).toHaveCount(0);
  await expect(nav.getByRole('link', { name: 'Audit Log' })).toHaveCount(0);
  await check('operator-search-empty');

  const serial = lanyard.erinKeySerial;
  const model = lanyard.erinKeyModel;
  await page.getByLabel('Find a user or device').fill(` ${serial.slice(0, 4)} ${serial.slice(4)} `);
  await page.getByRole('button', { name: 'Search' }).click();
  const row = page.getByRole('row', { name: new RegExp(serial) });
  await expect(row).toContainText('Active');
  await expect(row).toContainText('erin');
  await check('operator-search-serial');

  await row.getByRole('link', { name: model }).click();
  await expect(page).toHaveURL(new RegExp(`/portal/operator/devices/${lanyard.erinKey}$`));
  await expect(page.locator('#state-badge')).toHaveText('Active');
  await check('operator-device-active');

  await page.getByRole('link', { name: 'Suspend' }).click();
  await expect(page.getByRole('heading', { level: 1 })).toHaveText(`Suspend this ${model}?`);
  await expect(page.getByText('Erin Ellis (erin)')).toBeVisible();
  await check('operator-confirm-suspend');
  await page.getByLabel(/Note for the audit log/).fill('Erin called: key left at home, ticket 1234');
  await page.getByRole('button', { name: `Suspend ${model}` }).click();

  await expect(page.locator('#state-badge')).toHaveText('Suspended');
  await expect(page.getByRole('status')).toContainText('Done: Suspend');
  const trail = page.getByRole('region', { name: 'Audit events, scrollable' });
  await expect(trail.getByRole('row', { name: /device\.suspend/ })).toContainText('Erin called: key left at home, ticket 1234');
  await check('operator-device-suspended');

  await page.getByRole('link', { name: 'Resume' }).click();
  await expect(page.getByRole('heading', { level: 1 })).toHaveText(`Resume this ${model}?`);
  await page.getByRole('button', { name: `Resume ${model}` }).click();
  await expect(page.locator('#state-badge')).toHaveText('Active');
});

test('a search by certificate serial, with colons, finds the card; a user page lists the holder\'s devices', async ({ page, lanyard, check }) => {
  await signIn(page, 'oscar');
  const colons = lanyard.aliceCertSerial.toUpperCase().match(/.{1,2}/g)!.join(':');
  await page.getByLabel('Find a user or device').fill(colons);
  await page.getByRole('button', { name: 'Search' }).click();
  await page.getByRole('row', { name: /31415926/ }).getByRole('link', { name: 'alice' }).click();
  await expect(page.getByRole('heading', { level: 1 })).toHaveText('Alice Archer');
  await expect(page.getByRole('row', { name: /31415926/ })).toContainText('Issuing');
  await check('operator-user');
});

test('a cardholder gets the 404 page for the help desk and the audit log', async ({ page, lanyard, allowConsole }) => {
  allowConsole(/status of 404/);
  await signIn(page, 'bob');
  for (const url of ['/portal/operator', `/portal/operator/devices/${lanyard.erinKey}`, `/portal/operator/devices/${lanyard.erinKey}/suspend`, '/portal/audit']) {
    const resp = await page.goto(url);
    expect(resp!.status(), url).toBe(404);
    await expect(page.getByRole('heading', { level: 1 })).toHaveText('Page not found');
  }
  await expect(page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Help Desk' })).toHaveCount(0);
});

test('the audit log shows the events with the chain verified, and filters by action', async ({ page, check, allowConsole }) => {
  allowConsole(/status of 400/);
  await signIn(page, 'audrey');
  await expect(page).toHaveURL(/\/portal\/audit$/);
  await expect(page.locator('#chain')).toContainText('Chain verified');
  await expect(page.getByRole('row', { name: /device\.register/ }).first()).toBeVisible();
  await check('audit-log');
  await page.getByLabel('Action').fill('device.suspend');
  await page.getByRole('button', { name: 'Filter' }).click();
  const rows = page.getByRole('region', { name: 'Audit events, scrollable' }).getByRole('row');
  await expect(rows.filter({ hasText: 'device.suspend' }).first()).toContainText('ticket 1234');
  await expect(rows.filter({ hasText: 'session.login' })).toHaveCount(0);
  await check('audit-log-filtered');
  await page.getByLabel('From').fill('2001-01-02');
  await page.getByLabel('To (inclusive)').fill('2001-01-01');
  await page.getByRole('button', { name: 'Filter' }).click();
  await expect(page.getByRole('alert')).toContainText('To: must not be before From.');
});

test('at 375 px the help desk, audit log and administration pages fit the screen', async ({ page, lanyard, check }) => {
  await page.setViewportSize({ width: 375, height: 740 });
  const pages: Array<[string, string, string]> = [
    ['oscar', '/portal/operator?q=1618+0339', 'operator-search-375'],
    ['oscar', `/portal/operator/devices/${lanyard.erinKey}`, 'operator-device-375'],
    ['oscar', `/portal/operator/devices/${lanyard.erinKey}/revoke`, 'operator-confirm-revoke-375'],
    ['audrey', '/portal/audit', 'audit-log-375'],
    ['ada', '/portal/admin', 'admin-375'],
    ['ada', '/portal/admin/users', 'admin-users-375'],
    ['ada', '/portal/admin/profiles', 'admin-profiles-375'],
  ];
  let who = '';
  for (const [user, url, name] of pages) {
    if (user !== who) {
      if (who) await page.getByRole('button', { name: 'Sign out' }).click();
      await signIn(page, user);
      who = user;
    }
    await page.goto(url);
    const width = await page.evaluate(() => document.documentElement.scrollWidth);
    expect(width, `${url} is ${width} px wide`).toBeLessThanOrEqual(375);
    await check(name);
  }
});
