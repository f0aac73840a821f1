// Starts a real `lanyard serve` on a fresh data directory and prepares what the specs need,
// through Lanyard's own CLI (`lanyard login`, `lanyard user add`), its API where the CLI has no
// command (groups and policies, certificates from a CSR), and a real card session for the one
// Active key (a virtual card in a pcscd of the setup's own, `lanyard agent issue`). The server
// runs for the whole run; the returned function stops it.

import { execFileSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Api, PASSWORD, State, STATE_ENV } from './lanyard';
import { VirtualCards } from './rig';
import { lanyardEnv, Served, startServe, stopServe } from './serve';

const repo = path.resolve(__dirname, '..', '..', '..');
/** base64(SHA-256(SubjectPublicKeyInfo)) of the server's TLS certificate, which must chain to
 *  `root`: Chromium trusts exactly this key (--ignore-certificate-errors-spki-list). */
function spkiHash(dir: string): string {
  const leaf = new crypto.X509Certificate(fs.readFileSync(path.join(dir, 'ca', 'tls.crt')));
  const root = new crypto.X509Certificate(fs.readFileSync(path.join(dir, 'ca', 'root.crt')));
  const issuing = new crypto.X509Certificate(fs.readFileSync(path.join(dir, 'ca', 'issuing.crt')));
  if (!(leaf.verify(issuing.publicKey) || leaf.verify(root.publicKey))) {
    throw new Error('the server TLS certificate does not chain to its CA');
  }
  const spki = leaf.publicKey.export({ type: 'spki', format: 'der' });
  return crypto.createHash('sha256').update(spki).digest('base64');
}

export default async function globalSetup() {
  const bin = process.env.LANYARD_BIN ?? path.join(repo, 'target', 'debug', 'lanyard');
  if (!fs.existsSync(bin)) {
    throw new Error(`${bin} is missing: build it first (cargo build -p lanyard --bin lanyard), or set LANYARD_BIN`);
  }
  // A virtual card in a pcscd of the setup's own, for Erin's key (below); the server trusts its
  // attestation root.
  const cards = await VirtualCards.startCards(bin, { cards: 1 });
  let served: Served | undefined;
  try {
    served = await startServe(bin, { LANYARD_ATTESTATION_ROOTS: cards.attestationRoot });
    return await prepare(bin, served, cards);
  } catch (e) {
    if (served) await stopServe(served.child, served.dir);
    throw e;
  } finally {
    await cards.stop();
  }
}

/** Users, groups and devices; answers the function that stops the server. */
async function prepare(bin: string, served: Served, cards: VirtualCards) {
  const { child, dir, data, baseURL, adminPassword } = served;
  const rootCert = path.join(data, 'ca', 'root.crt');

  // The administrator signs in through the CLI, which keeps an API token.
  const cliConfig = path.join(dir, 'cli.json');
  execFileSync(bin, ['login', '--server', baseURL, '--ca-cert', rootCert, '--username', 'admin'], {
    env: lanyardEnv({ LANYARD_CLI_CONFIG: cliConfig, LANYARD_PASSWORD: adminPassword }),
    stdio: 'pipe',
  });
  const token = JSON.parse(fs.readFileSync(cliConfig, 'utf8')).token as string;
  const api = new Api(baseURL, new crypto.X509Certificate(fs.readFileSync(rootCert)).toString(), token);

  // Groups: the default one, one that may not add cards, one that allows a single card.
  const groups = (await api.call('GET', '/api/v1/groups')).body as Array<{ name: string; policy: any }>;
  const base = groups.find((g) => g.name === 'default');
  if (!base) throw new Error(`no default group in ${JSON.stringify(groups)}`);
  await api.ok('POST', '/api/v1/groups', { name: 'no-cards', policy: { ...base.policy, may_add_device: false } });
  await api.ok('POST', '/api/v1/groups', { name: 'one-card', policy: { ...base.policy, max_devices: 1 } });
  // Cardholders, made with the admin CLI, each with an initial password for the portal.
  const user = (username: string, displayName: string, group: string) =>
    execFileSync(bin, ['user', 'add', '--username', username, '--display-name', displayName, '--role', 'user',
      '--group', group, '--with-password'], {
      env: lanyardEnv({ LANYARD_CLI_CONFIG: cliConfig, LANYARD_PASSWORD: PASSWORD }),
      stdio: 'pipe',
    });
  user('alice', 'Alice Archer', 'default');
  user('bob', 'Bob Baker', 'default');
  user('carol', 'Carol Cole', 'no-cards');
  user('dana', 'Dana Dale', 'one-card');
  user('erin', 'Erin Ellis', 'default');

  // Alice's card, registered by an operator (issuance to her begins), with a Digital Signature
  // certificate issued from a CSR made by openssl.
  const card = await api.ok('POST', '/api/v1/devices', {
    kind: 'smart_card', model: 'YubiKey 5', serial: '31415926', owner: 'alice',
  });
  execFileSync('openssl', ['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', path.join(dir, 'key.pem'), '-out', path.join(dir, 'req.pem'), '-subj', '/CN=ignored'], { stdio: 'pipe' });
  const issued = await api.ok('POST', `/api/v1/devices/${card.id}/certificates`, {
    csr_pem: fs.readFileSync(path.join(dir, 'req.pem'), 'utf8'), profile: 'digital-signature', slot: '9c',
  });
  const dana = await api.ok('POST', '/api/v1/devices', {
    kind: 'usb_key', model: 'YubiKey 5', serial: '27182818', owner: 'dana',
  });

  // Staff: an operator, an auditor and an administrator, none a cardholder.
  const staff = (username: string, displayName: string, role: string) =>
    execFileSync(bin, ['user', 'add', '--username', username, '--display-name', displayName, '--role', role,
      '--group', 'default', '--with-password'], {
      env: lanyardEnv({ LANYARD_CLI_CONFIG: cliConfig, LANYARD_PASSWORD: PASSWORD }),
      stdio: 'pipe',
    });
  staff('oscar', 'Oscar Ortiz', 'operator');
  staff('audrey', 'Audrey Auditor', 'auditor');
  staff('ada', 'Ada Admin', 'administrator');
  // Erin's key in use, issued for real: with her session she starts issuing the virtual card
  // (`POST /api/v1/issuance`), and `lanyard agent issue` runs the card session with the ticket on
  // the setup's pcscd, setting a new PIN, so the key ends Active as any issued key does.
  const erin = await api.signedIn('erin', PASSWORD);
  const erinKeySerial = String(cards.cardSerial(0));
  const erinKeyModel = 'YubiKey 5';
  const started = await erin.ok('POST', '/api/v1/issuance', { kind: 'usb_key', model: erinKeyModel, serial: erinKeySerial });
  execFileSync(bin, ['agent', 'issue', '--server', baseURL, '--ca-cert', rootCert, '--ticket', started.ticket,
    '--reader', cards.readerName(0)], {
    env: lanyardEnv({ PCSCLITE_CSOCK_NAME: cards.socket, LANYARD_NEW_PIN: '24681357' }),
    stdio: 'pipe',
  });
  const erinKey = await api.ok('GET', `/api/v1/devices/${started.device.id}`);
  if (erinKey.state !== 'active') throw new Error(`Erin's key is ${erinKey.state} after its card session`);

  const state: State = {
    baseURL,
    spki: spkiHash(data),
    bin,
    rootCert,
    dir,
    aliceCard: card.id,
    aliceCertSerial: issued.credential.kind.serial_hex,
    danaCard: dana.id,
    erinKey: erinKey.id,
    erinKeySerial,
    erinKeyModel,
  };
  const file = path.join(dir, 'state.json');
  fs.writeFileSync(file, JSON.stringify(state, null, 2));
  process.env[STATE_ENV] = file;
  // The workers (started after this) trust the server's root for `page.request` calls.
  process.env.NODE_EXTRA_CA_CERTS = rootCert + '.pem';
  fs.writeFileSync(rootCert + '.pem', new crypto.X509Certificate(fs.readFileSync(rootCert)).toString());

  return () => stopServe(child, dir);
}
