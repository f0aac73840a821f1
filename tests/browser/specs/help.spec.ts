import { test, expect, signIn } from '../support/lanyard';

test('Troubleshooting is open to everyone and covers agent, readers, cards and failed issuance', async ({ page, check }) => {
  await page.goto('/portal/help');
  const headings = await page.getByRole('heading', { level: 2 }).allInnerTexts();
  expect(headings).toEqual(['The workstation agent', 'Enrolling an iPhone or iPad (Add Mobile)', 'Card readers', 'Cards Lanyard cannot issue', 'A failed issuance', 'Signing in']);
  await check('troubleshooting');
  await signIn(page, 'alice');
  await page.getByRole('link', { name: 'Troubleshooting' }).click();
  await expect(page.getByRole('link', { name: 'Troubleshooting' })).toHaveAttribute('aria-current', 'page');
});

test('an unknown portal page is a 404 page that says what to do', async ({ page, check, allowConsole }) => {
  allowConsole(/status of 404/);
  const resp = await page.goto('/portal/no-such-page');
  expect(resp!.status()).toBe(404);
  await expect(page.getByRole('heading', { level: 1 })).toHaveText('Page not found');
  await expect(page.getByRole('alert')).toContainText('Check the address');
  await check('not-found');
});
