import { test, expect, signIn } from '../support/lanyard';

test('a form posted without the session token is refused with a page that says what to do', async ({ page, check, allowConsole }) => {
  allowConsole(/status of 403/);
  await signIn(page, 'alice');
  await expect(page).toHaveURL(/\/portal\/devices$/);
  // The sign-out form, stripped of its token, as a forged form would be.
  await page.locator('form[action="/portal/logout"] input[name="csrf_token"]').evaluate((el) => el.remove());
  await page.getByRole('button', { name: 'Sign out' }).click();
  await expect(page.getByRole('heading', { level: 1 })).toHaveText('This form could not be accepted');
  await expect(page.getByRole('alert')).toContainText('Go back, reload the page, and submit it again.');
  await check('csrf-refused');
  // Nothing happened: still signed in.
  await page.goto('/portal/devices');
  await expect(page.getByRole('heading', { level: 1 })).toHaveText('My Devices');
});

test('posts without the token, with a wrong one, or from another origin change nothing', async ({ page }) => {
  await signIn(page, 'alice');
  await expect(page).toHaveURL(/\/portal\/devices$/);
  const token = await page.locator('input[name="csrf_token"]').first().getAttribute('value');
  expect(token).toMatch(/^[0-9a-f]{64}$/);

  const none = await page.request.post('/portal/logout', { form: {} });
  expect(none.status()).toBe(403);
  expect(await none.text()).toContain('This form could not be accepted');
  const wrong = await page.request.post('/portal/logout', { form: { csrf_token: '0'.repeat(64) } });
  expect(wrong.status()).toBe(403);
  const elsewhere = await page.request.post('/portal/logout', {
    form: { csrf_token: token! },
    headers: { origin: 'https://evil.example', 'sec-fetch-site': 'cross-site' },
  });
  expect(elsewhere.status()).toBe(403);
  expect(await elsewhere.text()).toContain('Request from another site refused');
  const pairing = await page.request.post('/portal/workstations/pairing', { form: {} });
  expect(pairing.status()).toBe(403);
  // The JSON API holds the same line for the same session.
  const api = await page.request.post('/api/v1/agents/pairing');
  expect(api.status()).toBe(403);

  await page.goto('/portal/devices');
  await expect(page.getByRole('heading', { level: 1 })).toHaveText('My Devices');
  // With the token, sign-out works.
  const out = await page.request.post('/portal/logout', { form: { csrf_token: token! }, maxRedirects: 0 });
  expect(out.status()).toBe(303);
  await page.goto('/portal/devices');
  await expect(page).toHaveURL(/\/portal\/login$/);
});

test('htmx shows a refused request as the error page, and an ended session as the sign-in page', async ({ page, context, allowConsole }) => {
  allowConsole(/status of 403/);
  allowConsole(/^Response Status Error Code 403 from \/portal\/workstations\/pairing/); // htmx's own note
  await signIn(page, 'alice');
  await page.goto('/portal/workstations');
  // Without the token in the header and the form, htmx's request is refused: the error page
  // takes the place of the content.
  await page.locator('body').evaluate((b) => b.removeAttribute('hx-headers'));
  await page.locator('#pairing input[name="csrf_token"]').evaluate((el) => el.remove());
  await page.getByRole('button', { name: 'Show a pairing code' }).click();
  await expect(page.getByRole('heading', { level: 1 })).toHaveText('This form could not be accepted');
  await expect(page.getByText('Signed in as')).toBeVisible();
  // With the session gone, htmx navigates to sign in instead of swapping it into the page.
  await page.goto('/portal/workstations');
  await context.clearCookies();
  await page.getByRole('button', { name: 'Show a pairing code' }).click();
  await expect(page).toHaveURL(/\/portal\/login$/);
});

