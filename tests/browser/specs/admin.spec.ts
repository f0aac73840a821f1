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
