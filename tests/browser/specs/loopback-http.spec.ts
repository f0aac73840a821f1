import { test, expect } from '../support/lanyard';
import { startServe, stopServe, Served } from '../support/serve';

// The demo case: plain HTTP on a loopback address (tls.mode = "off"). Chromium counts
// http://127.0.0.1 as a secure context, so it keeps the Secure, __Host- session cookie.
let served: Served;
test.beforeAll(async ({ lanyard }) => {
  served = await startServe(lanyard.bin, { LANYARD_TLS_MODE: 'off' });
});
test.afterAll(async () => {
  await stopServe(served.child, served.dir);
});

test('over plain HTTP on loopback, sign-in keeps the secure cookie and sign-out works', async ({ page, context }) => {
  await page.goto(`${served.baseURL}/`);
  await expect(page).toHaveURL(`${served.baseURL}/portal/login`);
  await page.getByLabel('Username').fill('admin');
  await page.getByLabel('Password').fill(served.adminPassword);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await expect(page).toHaveURL(`${served.baseURL}/portal/devices`);
  const [cookie] = await context.cookies(served.baseURL);
  expect(cookie).toMatchObject({ name: '__Host-lanyard_session', secure: true, httpOnly: true, sameSite: 'Strict' });
  await page.getByRole('button', { name: 'Sign out' }).click();
  await expect(page).toHaveURL(`${served.baseURL}/portal/login?signed_out=1`);
  expect(await context.cookies(served.baseURL)).toEqual([]);
});
