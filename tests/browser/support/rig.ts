/**
 * A card rig: the real processes a spec needs to take a virtual card through the portal, all of
 * them its own and stopped by `stop()`.
 *
 *  - a private `pcscd` in a mount namespace (`unshare --mount`, bind-mounting a directory of the
 *    rig's over `/run`), whose only readers are vpcd's on two free ports — so the system pcscd's
 *    readers stay free for the interop tests, and rigs of different specs never see each other's
 *    cards;
 *  - `lanyard vcard new` for 1 or 2 factory-fresh cards and one `lanyard vcard run` serving them
 *    with a control socket: card k sits in reader `readerName(k)`, and `insert(k)` / `remove(k)`
 *    put it in and pull it out like a hand would;
 *  - a `lanyard serve` of its own (support/serve.ts) on a fresh data directory, trusting the
 *    virtual cards' attestation root, plain HTTP on loopback unless `serveEnv` says otherwise;
 *  - the bootstrap administrator signed in with the CLI (`cli(...)` runs admin commands), and
 *    `addUser` for cardholders and staff;
 *  - agents: `pairAgent(code, host)` redeems a pairing code (one the portal showed, or one from
 *    `pairingCode(session)`, i.e. `POST /api/v1/agents/pairing` with that user's session) with
 *    `lanyard agent pair`, and `runAgent` starts `lanyard agent run` on the private pcscd, logging
 *    to a file of its own; `agentFor(user, host)` does all three;
 *  - `removeAfterApdu(k, cmd)`: pull card k the moment a card has answered a given command (with
 *    `traceApdus`), to cut a card session at a known point;
 *  - `pkcs11(...)`: OpenSC's pkcs11-tool against the private pcscd;
 *  - `until(...)` to wait for a condition (a deadline only against hanging, never an assertion).
 *
 * The card half alone (pcscd, cards, insert/remove, pkcs11, an agent's environment) is
 * `VirtualCards.startCards(bin, opts)`, for a server started elsewhere.
 *
 * Usage: `const rig = await CardRig.start(bin, { cards: 2 })` in `beforeAll`, `await rig.stop()` in
 * `afterAll`. Set LANYARD_KEEP_BROWSER_TMP=1 to keep the rig's directory (logs) after the run.
 */

import { ChildProcess, execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Page } from '@playwright/test';
import { PASSWORD } from './lanyard';
import { lanyardEnv, Served, startServe, stopServe } from './serve';

const VPCD_DRIVER = '/usr/lib/pcsc/drivers/serial/libifdvpcd.so';
const FRIENDLY = 'Lanyard Browser PCD';

export interface RigOptions extends CardOptions {
  /** Extra settings for `lanyard serve` (LANYARD_* variables). */
  serveEnv?: Record<string, string>;
}

export interface NewUser {
  username: string;
  displayName: string;
  /** One or more of user, operator, administrator, auditor. Default: user. */
  roles?: string[];
  /** Default: `default`. */
  group?: string;
  /** The portal password. Default: PASSWORD from support/lanyard.ts. */
  password?: string;
}

/** A signed-in API session of one user: the session cookie and its CSRF token. */
export interface Session {
  username: string;
  cookie: string;
  csrf: string;
}

export interface Agent {
  /** The agent's id on the server. */
  id: string;
  hostName: string;
  /** Its LANYARD_AGENT_CONFIG file (credential). */
  config: string;
  /** Where `agent run` writes its output. */
  log: string;
  /** The running `agent run`, once started. */
  child?: ChildProcess;
}

/** A port p with p and p+1 free (vpcd's two slots). */
async function twoFreePorts(): Promise<number> {
  const free = (port: number) => new Promise<boolean>((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
  for (let i = 0; i < 200; i++) {
    const p = 20000 + Math.floor(Math.random() * 40000);
    if ((await free(p)) && (await free(p + 1))) return p;
  }
  throw new Error('no two consecutive free ports');
}

/** Waits until `ok()` holds (polling every 100 ms); throws naming `what` after `ms`. */
export async function until(what: string, ok: () => boolean | Promise<boolean>, ms = 20_000) {
  const end = Date.now() + ms;
  while (!(await ok())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export function pkcs11Module(): string {
  for (const p of ['/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so', '/usr/lib/aarch64-linux-gnu/opensc-pkcs11.so',
    '/usr/lib/opensc-pkcs11.so']) {
    if (fs.existsSync(p)) return p;
  }
  throw new Error('OpenSC PKCS#11 module missing (package opensc-pkcs11)');
}

export interface CardOptions {
  /** Virtual cards to make (vpcd offers two slots per port pair): 1 or 2. Default 1. */
  cards?: number;
  /** Which cards start in their reader (by index); the others wait outside. Default: all. */
  inserted?: number[];
  /** Log every APDU the cards answer to `vcard.log` (needed by `removeAfterApdu`). The log then
   *  holds what the cards were sent, PINs included: for test rigs only. */
  traceApdus?: boolean;
}

/**
 * The card half of a rig, usable alone (global setup issues a card with it to its own server): a
 * private pcscd and `lanyard vcard run` with 1 or 2 factory-fresh cards, made with an attestation
 * root of their own (`attestationRoot`, for a server's LANYARD_ATTESTATION_ROOTS).
 */
export class VirtualCards {
  /** The temporary directory: logs, card images, agent configs. */
  readonly work: string;
  /** The private pcscd's socket (PCSCLITE_CSOCK_NAME for its clients). */
  socket = '';
  /** `vcard run`'s control socket. */
  control = '';
  /** The card images, by index. */
  images: string[] = [];
  /** The PEM file of the attestation root that certifies the cards' attestation keys. */
  attestationRoot = '';
  protected children: ChildProcess[] = [];

  protected constructor(readonly bin: string) {
    this.work = fs.mkdtempSync(path.join(os.tmpdir(), 'lanyard-browser-rig-'));
  }

  /** Starts pcscd and the cards. On failure, stops what it started before throwing. */
  static async startCards(bin: string, opts: CardOptions = {}): Promise<VirtualCards> {
    const cards = new VirtualCards(bin);
    try {
      await cards.bootCards(opts);
    } catch (e) {
      await cards.stop();
      throw e;
    }
    return cards;
  }

  /** The PC/SC name of card k's reader. */
  readerName(k: number): string { return `${FRIENDLY} 00 0${k}`; }

  protected async bootCards(opts: CardOptions) {
    const cards = opts.cards ?? 1;
    if (cards < 1 || cards > 2) throw new Error('a rig has 1 or 2 cards (one vpcd port pair)');
    if (!fs.existsSync(VPCD_DRIVER)) throw new Error('the vpcd driver is missing (package vsmartcard-vpcd)');
    const port = await twoFreePorts();
    const conf = path.join(this.work, 'reader.conf.d');
    fs.mkdirSync(conf);
    fs.mkdirSync(path.join(this.work, 'run', 'pcscd'), { recursive: true });
    const hex = port.toString(16).toUpperCase();
    fs.writeFileSync(path.join(conf, 'vpcd'),
      `FRIENDLYNAME "${FRIENDLY}"\nDEVICENAME   /dev/null:0x${hex}\nLIBPATH      ${VPCD_DRIVER}\nCHANNELID    0x${hex}\n`);
    const root = process.getuid ? process.getuid() === 0 : false;
    // unshare without --fork execs sh, which execs pcscd: the child's pid is pcscd's.
    this.spawnLogged('unshare', [...(root ? [] : ['--map-root-user']), '--mount', 'sh', '-c',
      'mount --bind "$0" /run && exec pcscd --foreground -c "$1"', path.join(this.work, 'run'), conf],
    process.env, 'pcscd.log');
    this.socket = path.join(this.work, 'run', 'pcscd', 'pcscd.comm');
    await until('the private pcscd socket', () => fs.existsSync(this.socket));

    const home = path.join(this.work, 'vcard-home');
    for (let k = 0; k < cards; k++) {
      const image = path.join(this.work, `card${k}.json`);
      execFileSync(this.bin, ['vcard', 'new', '--image', image, '--home', home], { env: lanyardEnv({}), stdio: 'pipe' });
      this.images.push(image);
    }
    this.attestationRoot = path.join(home, 'attestation-root.pem');
    this.control = path.join(this.work, 'vcard.sock');
    this.spawnLogged(this.bin, ['vcard', 'run', ...this.images.flatMap((i) => ['--image', i]), '--port', String(port),
      '--control', this.control], lanyardEnv(opts.traceApdus ? { RUST_LOG: 'info,lanyard_vcard=trace' } : {}), 'vcard.log');
    await until('the virtual cards', () => fs.existsSync(this.control));
    const inserted = opts.inserted ?? this.images.map((_, k) => k);
    for (let k = 0; k < cards; k++) if (!inserted.includes(k)) this.remove(k);
  }

  protected spawnLogged(cmd: string, args: string[], env: NodeJS.ProcessEnv, log: string): ChildProcess {
    const out = fs.openSync(path.join(this.work, log), 'a');
    const child = spawn(cmd, args, { env, stdio: ['ignore', out, out] });
    fs.closeSync(out);
    this.children.push(child);
    return child;
  }

  /** Puts card k back in its reader. */
  insert(k: number) {
    execFileSync(this.bin, ['vcard', 'insert', '--control', this.control, '--card', String(k)],
      { env: lanyardEnv({}), stdio: 'pipe' });
  }

  /** Pulls card k out of its reader (`vcard run` keeps its state). */
  remove(k: number) {
    execFileSync(this.bin, ['vcard', 'remove', '--control', this.control, '--card', String(k)],
      { env: lanyardEnv({}), stdio: 'pipe' });
  }

  /** Sends one line to `vcard run`'s control socket and answers its reply (as `lanyard vcard
   *  remove|insert` do, without starting a process). */
  private controlLine(line: string): Promise<string> {
    return new Promise((resolve, reject) => {
      const conn = net.createConnection(this.control, () => conn.write(line + '\n'));
      let reply = '';
      conn.on('data', (d) => (reply += d));
      conn.on('end', () => (reply.startsWith('error') ? reject(new Error(reply.trim())) : resolve(reply.trim())));
      conn.on('error', reject);
    });
  }

  /**
   * Pulls card k out as soon as a card has answered an APDU whose hex starts with `cmdHex`
   * (e.g. `0047009a`, GENERATE ASYMMETRIC KEY PAIR in slot 9A), as `vcard.log` records it; needs
   * `traceApdus`. Call it before starting what sends the APDU; the promise resolves once the card
   * is out. `vcard run` acts on the removal between two APDUs, so the card answers at most the
   * one it is working on when the removal arrives. `ms` bounds the wait against hanging.
   */
  async removeAfterApdu(k: number, cmdHex: string, ms = 120_000): Promise<void> {
    const log = path.join(this.work, 'vcard.log');
    let offset = fs.statSync(log).size;
    let seen = '';
    const wanted = `cmd=${cmdHex.toLowerCase()}`;
    const end = Date.now() + ms;
    const fd = fs.openSync(log, 'r');
    try {
      for (;;) {
        const size = fs.fstatSync(fd).size;
        if (size > offset) {
          const buf = Buffer.alloc(size - offset);
          fs.readSync(fd, buf, 0, buf.length, offset);
          offset = size;
          // Without the colours tracing puts around field names.
          seen = (seen + buf.toString('utf8')).replace(/\x1b\[[0-9;]*m/g, '').slice(-4096);
          if (seen.includes(wanted)) break;
        }
        if (Date.now() > end) throw new Error(`timed out waiting for an APDU ${cmdHex} in ${log}`);
        await new Promise((r) => setTimeout(r, 2));
      }
    } finally {
      fs.closeSync(fd);
    }
    await this.controlLine(`remove ${k}`);
  }

  /** Card k's serial number, as its image records it. */
  cardSerial(k: number): number {
    const shown = JSON.parse(execFileSync(this.bin, ['vcard', 'info', '--image', this.images[k], '--output', 'json'],
      { env: lanyardEnv({}), stdio: 'pipe' }).toString());
    return shown.serial;
  }

  /** OpenSC's pkcs11-tool against the private pcscd; answers stdout. */
  pkcs11(args: string[]): string {
    return execFileSync('pkcs11-tool', ['--module', pkcs11Module(), ...args],
      { env: { ...process.env, PCSCLITE_CSOCK_NAME: this.socket }, stdio: 'pipe' }).toString();
  }

  /** The environment of an agent process using `config` on the private pcscd. */
  agentEnv(config: string): NodeJS.ProcessEnv {
    return lanyardEnv({ LANYARD_AGENT_CONFIG: config, PCSCLITE_CSOCK_NAME: this.socket });
  }

  /** Stops the processes started here, newest first, waiting for each to exit. */
  protected async stopChildren() {
    for (const c of this.children.reverse()) {
      if (c.exitCode === null && c.signalCode === null) {
        const gone = new Promise((r) => c.once('exit', r));
        c.kill('SIGTERM');
        await gone;
      }
    }
    this.children = [];
  }

  /** Stops pcscd and the cards (and any agent started here), and removes the directory unless
   *  LANYARD_KEEP_BROWSER_TMP is set. */
  async stop() {
    await this.stopChildren();
    if (!process.env.LANYARD_KEEP_BROWSER_TMP) fs.rmSync(this.work, { recursive: true, force: true });
  }
}

export class CardRig extends VirtualCards {
  /** The rig's server. */
  served!: Served;
  /** The admin CLI's config (token), for LANYARD_CLI_CONFIG. */
  cliConfig = '';

  /** Starts pcscd, the cards and the server, and signs the administrator in with the CLI. On
   *  failure, stops what it started before throwing. */
  static async start(bin: string, opts: RigOptions = {}): Promise<CardRig> {
    const rig = new CardRig(bin);
    try {
      await rig.bootCards(opts);
      await rig.bootServer(opts);
    } catch (e) {
      await rig.stop();
      throw e;
    }
    return rig;
  }

  get baseURL(): string { return this.served.baseURL; }
  get adminPassword(): string { return this.served.adminPassword; }

  private async bootServer(opts: RigOptions) {
    this.served = await startServe(this.bin, {
      LANYARD_TLS_MODE: 'off',
      LANYARD_ATTESTATION_ROOTS: this.attestationRoot,
      ...(opts.serveEnv ?? {}),
    });
    this.cliConfig = path.join(this.work, 'cli.json');
    execFileSync(this.bin, ['login', '--server', this.baseURL, '--username', 'admin'],
      { env: lanyardEnv({ LANYARD_CLI_CONFIG: this.cliConfig, LANYARD_PASSWORD: this.adminPassword }), stdio: 'pipe' });
  }

  /** Runs an admin CLI command (`lanyard <args>`) as the signed-in administrator; answers stdout. */
  cli(args: string[], env: Record<string, string> = {}): string {
    return execFileSync(this.bin, args, { env: lanyardEnv({ LANYARD_CLI_CONFIG: this.cliConfig, ...env }), stdio: 'pipe' })
      .toString();
  }

  /** Adds a user with a portal password (`lanyard user add --with-password`). */
  addUser(u: NewUser) {
    const roles = u.roles ?? ['user'];
    this.cli(['user', 'add', '--username', u.username, '--display-name', u.displayName,
      ...roles.flatMap((r) => ['--role', r]), '--group', u.group ?? 'default', '--with-password'],
    { LANYARD_PASSWORD: u.password ?? PASSWORD });
  }

  /** A JSON request to the rig's server; `auth` is a user session (cookie + CSRF token). */
  async request(method: string, route: string, body?: unknown, auth?: Session): Promise<{ status: number; body: any }> {
    const headers: Record<string, string> = {};
    if (body !== undefined) headers['content-type'] = 'application/json';
    if (auth) {
      headers.cookie = auth.cookie;
      headers['x-csrf-token'] = auth.csrf;
    }
    const res = await fetch(new URL(route, this.baseURL), {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    let parsed: any = null;
    try { parsed = text ? JSON.parse(text) : null; } catch { parsed = text; }
    return { status: res.status, body: parsed };
  }

  /** Like `request`, and throws unless the answer is 2xx. */
  async ok(method: string, route: string, body?: unknown, auth?: Session): Promise<any> {
    const r = await this.request(method, route, body, auth);
    if (r.status >= 300) throw new Error(`${method} ${route}: ${r.status} ${JSON.stringify(r.body)}`);
    return r.body;
  }

  /** A JSON request as the administrator, with the admin CLI's API token; throws unless 2xx. */
  async admin(method: string, route: string, body?: unknown): Promise<any> {
    const token = JSON.parse(fs.readFileSync(this.cliConfig, 'utf8')).token as string;
    const res = await fetch(new URL(route, this.baseURL), {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    if (res.status >= 300) throw new Error(`${method} ${route}: ${res.status} ${text}`);
    return text ? JSON.parse(text) : null;
  }

  /** Adds a group whose policy is the default group's with `change` applied; answers the group. */
  async addGroup(name: string, change: (policy: any) => void): Promise<any> {
    const groups = (await this.admin('GET', '/api/v1/groups')) as Array<{ name: string; policy: any }>;
    const base = groups.find((g) => g.name === 'default');
    if (!base) throw new Error(`no default group in ${JSON.stringify(groups)}`);
    const policy = structuredClone(base.policy);
    change(policy);
    return this.admin('POST', '/api/v1/groups', { name, policy });
  }

  /** Signs a user in through `POST /api/v1/login`. */
  async login(username: string, password = PASSWORD): Promise<Session> {
    const res = await fetch(new URL('/api/v1/login', this.baseURL), {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ username, password }),
    });
    if (res.status !== 200) throw new Error(`login of ${username}: ${res.status} ${await res.text()}`);
    const cookie = (res.headers.get('set-cookie') ?? '').split(';')[0];
    const { csrf_token: csrf } = await res.json() as { csrf_token: string };
    return { username, cookie, csrf };
  }

  /** Signs a user in through the portal's sign-in page. */
  async signIn(page: Page, username: string, password = PASSWORD) {
    await page.goto(`${this.baseURL}/portal/login`);
    await page.getByLabel('Username').fill(username);
    await page.getByLabel('Password').fill(password);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.waitForURL((u) => !u.pathname.endsWith('/portal/login'));
  }

  /** A one-time pairing code for the session's user (`POST /api/v1/agents/pairing`). */
  async pairingCode(session: Session): Promise<string> {
    return (await this.ok('POST', '/api/v1/agents/pairing', {}, session)).code;
  }

  /** Redeems a pairing code with `lanyard agent pair` as workstation `hostName` (which names the
   *  agent's config and log files, so it must be unique in the rig). */
  pairAgent(code: string, hostName: string): Agent {
    const config = path.join(this.work, `agent-${hostName}.json`);
    const out = execFileSync(this.bin, ['agent', 'pair', '--server', this.baseURL, '--host-name', hostName,
      '--output', 'json', code], { env: this.agentEnv(config), stdio: 'pipe' }).toString();
    const id = JSON.parse(out).agent.id as string;
    return { id, hostName, config, log: path.join(this.work, `agent-${hostName}.log`) };
  }

  /** Starts `lanyard agent run` for a paired agent on the private pcscd. By default the agent
   *  keeps the initial PIN unless the portal sends one (`--skip-pin-change`). */
  runAgent(agent: Agent, args: string[] = ['--skip-pin-change']): Agent {
    agent.child = this.spawnLogged(this.bin, ['agent', 'run', ...args], this.agentEnv(agent.config),
      path.basename(agent.log));
    return agent;
  }

  /** Pairs an agent for `username` (code from the API, with that user's session) and runs it. */
  async agentFor(username: string, hostName: string, password = PASSWORD, args?: string[]): Promise<Agent> {
    const session = await this.login(username, password);
    return this.runAgent(this.pairAgent(await this.pairingCode(session), hostName), args);
  }

  /** Waits until the session user's agent is online and reports `reader` (with a card in it, if
   *  `withCard`), per `GET /api/v1/agents`. */
  async agentReports(session: Session, agent: Agent, reader: string, withCard = true, ms = 60_000) {
    await until(`agent ${agent.hostName} to report ${reader}`, async () => {
      const agents = (await this.ok('GET', '/api/v1/agents', undefined, session)) as any[];
      const a = agents.find((x) => x.id === agent.id);
      const readers: Array<{ name: string; card_present: boolean }> = a?.online ? (a.readers ?? []) : [];
      const found = readers.find((x) => x.name === reader);
      return !!found && (!withCard || found.card_present);
    }, ms);
  }


  /** Stops the agents, cards and pcscd, then the server, and removes the rig's directory unless
   *  LANYARD_KEEP_BROWSER_TMP is set. */
  async stop() {
    await this.stopChildren();
    if (this.served) await stopServe(this.served.child, this.served.dir);
    if (!process.env.LANYARD_KEEP_BROWSER_TMP) fs.rmSync(this.work, { recursive: true, force: true });
  }
}
