import { test, expect, signIn } from '../support/lanyard';

test('an administrator edits a policy; an invalid value is refused naming the field, and nothing is saved', async ({ page, check, allowConsole }) => {
  allowConsole(/status of 400/);
  await signIn(page, 'ada');
  await expect(page).toHaveURL(/\/portal\/admin$/);
  await expect(page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Administration' })).toHaveAttribute('aria-current', 'page');
  await check('admin-groups');

  await page.getByRole('link', { name: 'default', exact: true }).click();
  await expect(page.getByRole('heading', { level: 1 })).toHaveText('Policy of group default');
  const most = page.getByLabel('Most cards or keys per member');
  await expect(most).toHaveValue('2');
  await check('admin-policy');

  await most.fill('0');
  await page.getByRole('button', { name: 'Save policy' }).click();
  await expect(page.getByRole('alert')).toContainText('max_devices must be between 1 and 20, got 0');
  await expect(most).toHaveAttribute('aria-invalid', 'true');
  await expect(most).toHaveAccessibleDescription(/max_devices must be between 1 and 20/);
  await check('admin-policy-refused');
  // The error summary links to the field.
  await page.getByRole('alert').getByRole('link', { name: /max_devices/ }).click();
  await expect(most).toBeFocused();

  // Opened afresh, the stored policy is unchanged.
  await page.goto(page.url().split('#')[0]);
  await expect(most).toHaveValue('2');

  await most.fill('3');
  await page.getByRole('button', { name: 'Save policy' }).click();
  await expect(page.getByRole('status')).toContainText('The policy is saved');
  await expect(most).toHaveValue('3');
  // Back as it was, for the other specs.
  await most.fill('2');
  await page.getByRole('button', { name: 'Save policy' }).click();
  await expect(page.getByRole('status')).toContainText('The policy is saved');
});

test('an administrator creates a user, refused first for a bad username, then gives them a role', async ({ page, check, allowConsole }) => {
  allowConsole(/status of 400/);
  await signIn(page, 'ada');
  await page.getByRole('link', { name: 'Users' }).click();
  await expect(page.getByRole('heading', { level: 1 })).toHaveText('Users');
  await check('admin-users');
  await page.getByRole('link', { name: 'New user' }).click();
  await page.getByLabel('Username').fill('Frank Fern!');
  await page.getByLabel('Display name').fill('Frank Fern');
  await page.getByRole('button', { name: 'Create user' }).click();
  await expect(page.getByRole('alert')).toContainText('Username:');
  await expect(page.getByLabel('Username')).toHaveAttribute('aria-invalid', 'true');
  await expect(page.getByLabel('Display name')).toHaveValue('Frank Fern');
  await check('admin-user-refused');
  await page.getByLabel('Username').fill('frank');
  await page.getByRole('button', { name: 'Create user' }).click();
  await expect(page.getByRole('status')).toContainText('The user is created.');
  await expect(page.getByRole('heading', { level: 1 })).toHaveText('Frank Fern');
  await page.getByRole('checkbox', { name: /Auditor/ }).check();
  await page.getByRole('button', { name: 'Save roles' }).click();
  await expect(page.getByRole('status')).toContainText('Saved.');
  await expect(page.getByRole('checkbox', { name: /Auditor/ })).toBeChecked();
  await check('admin-user');
});

test('an administrator makes an API token, sees it once, and revokes it', async ({ page, check }) => {
  await signIn(page, 'ada');
  await page.getByRole('link', { name: 'My API tokens' }).click();
  await page.getByLabel('Name').fill('nightly export');
  await page.getByLabel('Expires in (days)').fill('30');
  await page.getByRole('button', { name: 'Create token' }).click();
  await expect(page.getByRole('alert')).toContainText('it is shown this once');
  const value = (await page.locator('#new-token').innerText()).trim();
  expect(value.length).toBeGreaterThan(20);
  await check('admin-token-created');
  await page.goto('/portal/admin/tokens');
  await expect(page.locator('main')).not.toContainText(value);
  const row = page.getByRole('row', { name: /nightly export/ });
  await row.getByRole('button', { name: 'Revoke token nightly export' }).click();
  await expect(page.getByRole('row', { name: /nightly export/ })).toContainText('Revoked');
  await check('admin-tokens');
});

test('an administrator reads the certificate profiles and the trust anchors', async ({ page, check }) => {
  await signIn(page, 'ada');
  await page.getByRole('link', { name: 'Certificate profiles' }).click();
  await expect(page.getByRole('row', { name: /^PIV Authentication \(9A\) piv-auth / })).toContainText('default (9a)');
  await check('admin-profiles');
  await page.goto('/portal/admin');
  await page.getByRole('link', { name: 'Trust anchors' }).click();
  await expect(page.getByRole('heading', { name: 'Lanyard root CA' })).toBeVisible();
  await check('admin-trust');
});
