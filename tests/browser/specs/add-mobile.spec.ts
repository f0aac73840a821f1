// Add Mobile (a configuration profile for an iPhone or iPad) in Chromium: the QR code on the
// page is read back with zbarimg and must be the link written under it; the link downloads the
// signed profile once; the new phone shows as Enrolling; Delete Mobile explains how to remove the
// profile from the phone; a group whose policy allows no mobiles sees the button disabled with
// the reason, and the API refuses with the same reason.

import { execFileSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import { Api, PASSWORD, test, expect, signIn, state } from '../support/lanyard';

/** The QR code in the PNG at `file`, as zbarimg reads it. */
function decodeQr(file: string): string {
  try {
    return execFileSync('zbarimg', ['--raw', '-q', file], { encoding: 'utf8' }).trim();
  } catch (e: any) {
    if (e.code === 'ENOENT') {
      throw new Error('zbarimg is missing: install Debian\'s zbar-tools (./scripts/test installs it with its apt list)');
    }
    throw new Error(`zbarimg found no QR code in ${file}: ${e.stderr ?? e.message}`);
  }
}

// Users of their own, so the phones added and deleted here touch no other spec: mia in the
// default group, and nils in a group whose policy an administrator turns mobiles off for.
test.beforeAll(async () => {
  const s = state();
  const ca = new crypto.X509Certificate(fs.readFileSync(s.rootCert)).toString();
  const admin = await new Api(s.baseURL, ca).signedIn('ada', PASSWORD);
  const groups = (await admin.ok('GET', '/api/v1/groups')) as Array<{ id: string; name: string; policy: any }>;
  const base = groups.find((g) => g.name === 'default')!;
  const off = groups.find((g) => g.name === 'phones-off');
  if (!off) {
    await admin.ok('POST', '/api/v1/groups', { name: 'phones-off', policy: base.policy });
  } else {
    // A repeated run against the same server: the test below turns mobiles off again from here.
    await admin.ok('PUT', `/api/v1/groups/${off.id}/policy`, base.policy);
  }
  for (const [username, display, group] of [['mia', 'Mia Moss', 'default'], ['nils', 'Nils North', 'phones-off']]) {
    const r = await admin.call('POST', '/api/v1/users', {
      username, display_name: display, roles: ['user'], group, password: PASSWORD,
    });
    if (r.status !== 201 && r.status !== 409) throw new Error(`creating ${username}: ${r.status} ${JSON.stringify(r.body)}`);
  }
});

test('Add Mobile shows a QR code of the one-time link, which downloads the profile once; Delete Mobile says how to remove it', async ({ page, check }, testInfo) => {
  await signIn(page, 'mia');
  await expect(page).toHaveURL(/\/portal\/devices$/);
  await check('add-mobile-my-devices');
  await page.getByRole('link', { name: 'Add Mobile' }).click();
  await expect(page.getByRole('heading', { level: 1 })).toHaveText('Add Mobile');
  await expect(page.getByRole('heading', { name: 'What you need' })).toBeVisible();
  await expect(page.getByText('The link you get is valid for 10 minutes and works once.')).toBeVisible();
  await check('add-mobile');
  // Its help link leads to the iPhone steps on Troubleshooting.
  const help = page.getByRole('link', { name: 'Enrolling an iPhone' });
  await expect(help).toHaveAttribute('href', '/portal/help#iphone');
  await help.click();
  await expect(page.getByRole('heading', { name: 'Enrolling an iPhone or iPad (Add Mobile)' })).toBeVisible();
  await page.goBack();

  await page.getByRole('button', { name: 'Continue' }).click();
  await expect(page.getByRole('heading', { level: 1 })).toHaveText('Add Mobile: scan this code with the phone');
  const link = (await page.locator('#profile-link').innerText()).trim();
  expect(link).toMatch(/^https:\/\/[^/]+\/enroll\/profile\/[A-Za-z0-9_-]{40}$/);
  const status = page.getByRole('region', { name: 'Your new mobile' });
  await expect(status).toContainText('Waiting for the phone to download the profile');
  await check('add-mobile-code');

  // The QR code, as a camera sees it on the screen, is the link written under it.
  const qr = page.getByRole('img', { name: /QR code of your one-time enrolment link/ });
  const shot = testInfo.outputPath('add-mobile-qr.png');
  await qr.screenshot({ path: shot });
  expect(decodeQr(shot)).toBe(link);

  // The phone opens the link: the signed profile, once.
  const profile = await page.request.get(link);
  expect(profile.status()).toBe(200);
  expect(profile.headers()['content-type']).toBe('application/x-apple-aspen-config');
  expect(profile.headers()['content-disposition']).toBe('attachment; filename="lanyard-mia.mobileconfig"');
  const body = await profile.body();
  expect(body[0], 'a DER SEQUENCE (CMS SignedData)').toBe(0x30);
  expect(body.includes(Buffer.from(link.split('/').pop()!)), 'the code is the SCEP challenge').toBe(true);
  const again = await page.request.get(link);
  expect(again.status()).toBe(410);
  expect(await again.text()).toContain('was already used');

  // The page notices by itself (htmx asks every few seconds): the phone is Enrolling.
  await expect(status).toContainText('Enrolling', { timeout: 15_000 });
  await expect(status).toContainText('profile downloaded, waiting for the phone to enrol its certificate');
  await check('add-mobile-enrolling');

  // Delete Mobile from the phone's page.
  await status.getByRole('link', { name: 'Apple device (configuration profile)' }).click();
  await expect(page).toHaveURL(/\/portal\/devices\/[0-9a-f-]{36}$/);
  await check('mobile-device');
  await page.getByRole('link', { name: 'Delete mobile' }).click();
  await expect(page.getByRole('heading', { level: 1 })).toHaveText('Delete this mobile?');
  await check('mobile-confirm-delete');
  await page.getByRole('button', { name: 'Delete mobile' }).click();
  await expect(page.getByRole('heading', { level: 1 })).toHaveText('Apple device (configuration profile) is deleted');
  await expect(page.getByRole('status')).toContainText('It had no certificate yet');
  const remove = page.getByRole('region', { name: 'Now remove the profile from the phone' });
  await expect(remove).toContainText('Settings → General → VPN & Device Management');
  await expect(remove).toContainText('Remove Profile');
  await expect(remove.getByRole('link', { name: 'Add Mobile' })).toHaveAttribute('href', '/portal/devices/mobile');
  await check('mobile-deleted');

  // Gone from My Devices, and Add Mobile is open again.
  await page.goto('/portal/devices');
  await expect(page.getByText('Apple device (configuration profile)')).toHaveCount(0);
  await expect(page.getByRole('link', { name: 'Add Mobile' })).toBeVisible();
});

test('an administrator turns mobiles off for a group: Add Mobile is disabled with the reason, and the API answers 403', async ({ page, check, allowConsole }) => {
  allowConsole(/status of 400/);
  await signIn(page, 'ada');
  await page.getByRole('link', { name: 'phones-off', exact: true }).click();
  await expect(page.getByRole('heading', { level: 1 })).toHaveText('Policy of group phones-off');
  const profiles = page.getByLabel('Members may add an iPhone or iPad with a configuration profile');
  const most = page.getByLabel('Most phones per member');
  await expect(profiles).toBeChecked();
  await expect(most).toHaveValue('3');
  await expect(most).toHaveAccessibleDescription(/1 to 20, counting both kinds of mobile/);
  await expect(page.getByLabel('Members may put a derived PIV credential on a phone')).toBeChecked();
  await expect(page.getByLabel(/revokes the derived credentials it sponsored recently/)).toBeChecked();

  // An impossible limit is refused under its field.
  await most.fill('21');
  await page.getByRole('button', { name: 'Save policy' }).click();
  await expect(page.getByRole('alert')).toContainText('max_mobiles must be between 1 and 20, got 21');
  await expect(most).toHaveAttribute('aria-invalid', 'true');
  await expect(most).toHaveAccessibleDescription(/max_mobiles must be between 1 and 20, got 21/);
  await check('admin-policy-mobiles-refused');

  await most.fill('2');
  await profiles.uncheck();
  await page.getByRole('button', { name: 'Save policy' }).click();
  await expect(page.getByRole('status')).toContainText('The policy is saved');
  await expect(profiles).not.toBeChecked();
  await expect(most).toHaveValue('2');
  await check('admin-policy-mobiles');
  await page.getByRole('button', { name: 'Sign out' }).click();

  const reason = "your group's policy does not allow adding a mobile device";
  await signIn(page, 'nils');
  await expect(page).toHaveURL(/\/portal\/devices$/);
  const add = page.getByRole('button', { name: 'Add Mobile' });
  await expect(add).toBeDisabled();
  await expect(add).toHaveAccessibleDescription(`You cannot add a mobile now: ${reason}.`);
  await check('add-mobile-disabled');
  await page.goto('/portal/devices/mobile');
  await expect(page.getByRole('alert')).toContainText(reason);
  await expect(page.getByRole('button', { name: 'Continue' })).toHaveCount(0);
  await check('add-mobile-refused');

  const token = await page.locator('input[name="csrf_token"]').first().getAttribute('value');
  const refused = await page.request.post('/api/v1/me/mobile-enrollments', {
    headers: { 'x-csrf-token': token! },
    data: { type: 'mobile_profile' },
  });
  expect(refused.status()).toBe(403);
  expect((await refused.json()).error).toBe(`policy: ${reason}`);
});
