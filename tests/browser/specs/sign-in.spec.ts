import { test, expect, signIn, PASSWORD } from '../support/lanyard';

test('the root sends a visitor to sign in, and the sign-in page is clean', async ({ page, check }) => {
  const resp = await page.goto('/');
  expect(new URL(page.url()).pathname).toBe('/portal/login');
  const h = resp!.headers();
  expect(h['content-security-policy']).toContain("script-src 'self'");
  expect(h['content-security-policy']).toContain("frame-ancestors 'none'");
  expect(h['x-content-type-options']).toBe('nosniff');
  expect(h['referrer-policy']).toBe('same-origin');
  expect(h['cache-control']).toBe('no-store');
  await expect(page).toHaveTitle('Sign in – Lanyard');
  await expect(page.getByRole('heading', { level: 1 })).toHaveText('Sign in to Lanyard');
  await check('sign-in');
});

test('a wrong password is refused with one message; the right one opens My Devices', async ({ page, context, check, allowConsole }) => {
  allowConsole(/status of 401/);
  await signIn(page, 'alice', 'not the password');
  const alert = page.getByRole('alert');
  await expect(alert).toContainText('That username and password do not match an account.');
  await expect(page.getByLabel('Username')).toHaveValue('alice');
  expect(await context.cookies()).toEqual([]);
  await check('sign-in-refused');

  // An unknown username gets exactly the same words.
  await signIn(page, 'nobody-here', 'not the password');
  await expect(page.getByRole('alert')).toContainText('That username and password do not match an account.');

  await signIn(page, 'alice', PASSWORD);
  await expect(page).toHaveURL(/\/portal\/devices$/);
  await expect(page.getByRole('heading', { level: 1 })).toHaveText('My Devices');
  await expect(page.getByText('Signed in as')).toContainText('alice');
  const [cookie] = await context.cookies();
  expect(cookie.name).toBe('__Host-lanyard_session');
  expect(cookie).toMatchObject({ secure: true, httpOnly: true, sameSite: 'Strict', path: '/' });

  // Signed in, the root and the sign-in page lead to the devices.
  await page.goto('/');
  await expect(page).toHaveURL(/\/portal\/devices$/);
  await page.goto('/portal/login');
  await expect(page).toHaveURL(/\/portal\/devices$/);
});

test('signing out ends the session; back and reload do not bring it back', async ({ page, context, check }) => {
  await signIn(page, 'bob');
  await expect(page).toHaveURL(/\/portal\/devices$/);
  const before = (await context.cookies())[0].value;
  await page.getByRole('button', { name: 'Sign out' }).click();
  await expect(page).toHaveURL(/\/portal\/login\?signed_out=1$/);
  await expect(page.getByRole('status')).toHaveText('You are signed out.');
  await check('signed-out');
  expect(await context.cookies()).toEqual([]);
  await page.goBack();
  await page.reload();
  await expect(page).toHaveURL(/\/portal\/login$/);
  // The old cookie value names no session any more.
  const stale = await page.request.get('/portal/devices', {
    headers: { cookie: `__Host-lanyard_session=${before}` },
    maxRedirects: 0,
  });
  expect(stale.status()).toBe(303);
  expect(stale.headers()['location']).toBe('/portal/login');
});

test('the keyboard reaches the skip link first, and it moves focus to the content', async ({ page }) => {
  await signIn(page, 'alice');
  await expect(page).toHaveURL(/\/portal\/devices$/);
  await page.keyboard.press('Tab');
  const skip = page.getByRole('link', { name: 'Skip to main content' });
  await expect(skip).toBeFocused();
  await expect(skip).toBeInViewport();
  const outline = await skip.evaluate((el) => getComputedStyle(el).outlineStyle + ' ' + getComputedStyle(el).outlineWidth);
  expect(outline, 'focus is visible').toBe('solid 3px');
  await page.keyboard.press('Enter');
  await expect(page.locator('main')).toBeFocused();
  await page.keyboard.press('Tab');
  await expect(page.getByRole('link', { name: 'Add Device' })).toBeFocused();
});
