// What the specs share: the run's server (from global setup), a small API client, and the
// `test` fixture that fails a test on any CSP violation or console error and checks every page
// with axe-core.

import { test as base, expect, Page } from '@playwright/test';
import AxeBuilder from '@axe-core/playwright';
import * as fs from 'node:fs';
import * as https from 'node:https';
import * as path from 'node:path';

export const PASSWORD = 'correct horse battery staple';
export const STATE_ENV = 'LANYARD_BROWSER_STATE';

export interface State {
  baseURL: string;
  /** base64 SHA-256 of the server's TLS key, for --ignore-certificate-errors-spki-list. */
  spki: string;
  bin: string;
  rootCert: string;
  dir: string;
  aliceCard: string;
  aliceCertSerial: string;
  danaCard: string;
  /** Erin's Active USB key, a virtual card issued through a real card session. */
  erinKey: string;
  /** Its serial (the virtual card's) and model, as the device records them. */
  erinKeySerial: string;
  erinKeyModel: string;
}

export function state(): State {
  const file = process.env[STATE_ENV];
  if (!file) throw new Error(`${STATE_ENV} is not set: the global setup did not run`);
  return JSON.parse(fs.readFileSync(file, 'utf8'));
}

/** A JSON client for Lanyard's API over HTTPS that trusts only the server's root, with an API
 *  token or a user's session (cookie and CSRF token, from `signedIn`). */
export class Api {
  constructor(private baseURL: string, private caPem: string, private token?: string,
    private session?: { cookie: string; csrf: string }) {}

  /** `POST /api/v1/login` as `username`: a client acting with that user's session. */
  async signedIn(username: string, password: string): Promise<Api> {
    const r = await this.raw('POST', '/api/v1/login', { username, password });
    if (r.status !== 200) throw new Error(`login of ${username}: ${r.status} ${r.text}`);
    const cookie = String(r.headers['set-cookie']?.[0] ?? '').split(';')[0];
    return new Api(this.baseURL, this.caPem, undefined, { cookie, csrf: JSON.parse(r.text).csrf_token });
  }

  private raw(method: string, route: string, body?: unknown):
    Promise<{ status: number; text: string; headers: import('node:http').IncomingHttpHeaders }> {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    return new Promise((resolve, reject) => {
      const req = https.request(new URL(route, this.baseURL), {
        method,
        ca: this.caPem,
        headers: {
          ...(this.token ? { authorization: `Bearer ${this.token}` } : {}),
          ...(this.session ? { cookie: this.session.cookie, 'x-csrf-token': this.session.csrf } : {}),
          ...(payload ? { 'content-type': 'application/json' } : {}),
        },
      }, (res) => {
        let text = '';
        res.on('data', (c) => (text += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text, headers: res.headers }));
      });
      req.on('error', reject);
      if (payload) req.write(payload);
      req.end();
    });
  }

  async call(method: string, route: string, body?: unknown): Promise<{ status: number; body: any }> {
    const r = await this.raw(method, route, body);
    return { status: r.status, body: r.text ? JSON.parse(r.text) : null };
  }

  async ok(method: string, route: string, body?: unknown): Promise<any> {
    const r = await this.call(method, route, body);
    if (r.status >= 300) throw new Error(`${method} ${route}: ${r.status} ${JSON.stringify(r.body)}`);
    return r.body;
  }
}

export const screenshotDir = path.resolve(__dirname, '..', '..', '..', 'target', 'browser-screenshots');

interface ConsoleWatch {
  allowed: RegExp[];
  problems: string[];
}

type Fixtures = {
  consoleWatch: ConsoleWatch;
  /** Lets through console messages a test causes on purpose (the browser's note about a 404
   *  or 403 the test asked for). */
  allowConsole: (pattern: RegExp) => void;
  /** Checks the page as it is now with axe-core (WCAG 2.x A and AA) and saves a screenshot. */
  check: (name: string) => Promise<void>;
};

export const test = base.extend<Fixtures, { lanyard: State }>({
  lanyard: [async ({}, use) => use(state()), { scope: 'worker' }],
  baseURL: async ({ lanyard }, use) => use(lanyard.baseURL),
  launchOptions: [async ({ lanyard }, use) => {
    await use({
      executablePath: process.env.LANYARD_CHROMIUM ?? '/usr/bin/chromium',
      // Trust exactly the test server's TLS key: no blanket "ignore certificate errors".
      args: [`--ignore-certificate-errors-spki-list=${lanyard.spki}`],
    });
  }, { scope: 'worker' }],
  consoleWatch: async ({}, use) => use({ allowed: [], problems: [] }),
  allowConsole: async ({ consoleWatch }, use) => use((re) => { consoleWatch.allowed.push(re); }),
  page: async ({ page, consoleWatch }, use) => {
    // Report CSP violations on the console too, whatever Chromium itself prints for them.
    await page.addInitScript(() => {
      document.addEventListener('securitypolicyviolation', (e) => {
        console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI || 'inline code'}`);
      });
    });
    page.on('console', (m) => {
      if ((m.type() === 'error' || m.type() === 'warning') && !consoleWatch.allowed.some((re) => re.test(m.text()))) {
        consoleWatch.problems.push(`${m.type()}: ${m.text()} (${page.url()})`);
      }
    });
    page.on('pageerror', (e) => consoleWatch.problems.push(`uncaught: ${e.message} (${page.url()})`));
    await use(page);
    expect(consoleWatch.problems, 'console errors, warnings and CSP violations').toEqual([]);
  },
  check: async ({ page }, use) => use((name) => checkPage(page, name)),
});

export { expect };

/** axe-core with every WCAG 2.x A/AA rule, then a full-page screenshot. */
export async function checkPage(page: Page, name: string) {
  const results = await new AxeBuilder({ page })
    .withTags(['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'wcag22a', 'wcag22aa'])
    .analyze();
  const found = results.violations.map((v) => `${v.id}: ${v.help} (${v.nodes.map((n) => n.target.join(' ')).join(', ')})`);
  expect(found, `accessibility violations on ${page.url()}`).toEqual([]);
  fs.mkdirSync(screenshotDir, { recursive: true });
  await page.screenshot({ path: path.join(screenshotDir, `${name}.png`), fullPage: true });
}

export async function signIn(page: Page, username: string, password = PASSWORD) {
  await page.goto('/portal/login');
  await page.getByLabel('Username').fill(username);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Sign in' }).click();
}
