// Starting and stopping a real `lanyard serve` on a fresh data directory.

import { spawn, ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import * as readline from 'node:readline';

export interface Served {
  child: ChildProcess;
  dir: string;
  data: string;
  baseURL: string;
  adminPassword: string;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

/** Waits for the "listening" line; answers the bootstrap administrator's password. */
async function started(child: ChildProcess, log: fs.WriteStream): Promise<string> {
  const lines = readline.createInterface({ input: child.stdout! });
  let password = '';
  for await (const line of lines) {
    log.write(line + '\n');
    const m = line.match(/Bootstrap administrator: admin \/ (\S+)/);
    if (m) password = m[1];
    if (line.includes('Lanyard is listening')) break;
  }
  // Keep draining stdout so the server never blocks on a full pipe.
  lines.on('line', (l) => log.write(l + '\n'));
  if (!password) throw new Error('lanyard serve stopped before listening, or printed no bootstrap password');
  return password;
}

/** The environment for a `lanyard` child process: this one's without any LANYARD_* variable
 *  (`serve` refuses unknown ones, and the test run's own settings are not the server's), plus
 *  `extra`. */
export function lanyardEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('LANYARD_')) env[k] = v;
  return { ...env, ...extra };
}

/** `bin serve` on 127.0.0.1 and a free port, its data in a new temporary directory; `env` adds
 *  settings (e.g. `LANYARD_TLS_MODE: 'off'`). Resolves once it listens. */
export async function startServe(bin: string, env: Record<string, string>): Promise<Served> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lanyard-browser-'));
  const data = path.join(dir, 'data');
  const port = await freePort();
  const log = fs.createWriteStream(path.join(dir, 'serve.log'));
  // `{port}` in a setting stands for the port chosen here (e.g. LANYARD_PUBLIC_URL
  // `http://localhost:{port}`, which passkey specs need: browsers refuse IP addresses as WebAuthn
  // relying party ids).
  const settings = Object.fromEntries(Object.entries(env).map(([k, v]) => [k, v.split('{port}').join(String(port))]));
  const child = spawn(bin, ['serve'], {
    env: lanyardEnv({ ...settings, LANYARD_DATA_DIR: data, LANYARD_LISTEN: `127.0.0.1:${port}` }),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stderr!.pipe(log);
  const adminPassword = await started(child, log);
  const scheme = env.LANYARD_TLS_MODE === 'off' ? 'http' : 'https';
  return { child, dir, data, baseURL: `${scheme}://127.0.0.1:${port}`, adminPassword };
}

/** Stops the server, waits until it is gone, and removes its directory (unless
 *  LANYARD_KEEP_BROWSER_TMP is set, to read `serve.log`). */
export async function stopServe(child: ChildProcess, dir: string) {
  if (child.exitCode === null) {
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    await exited;
  }
  if (!process.env.LANYARD_KEEP_BROWSER_TMP) fs.rmSync(dir, { recursive: true, force: true });
}
