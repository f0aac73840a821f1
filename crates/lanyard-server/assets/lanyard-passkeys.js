// Lanyard passkeys: sign in with a passkey, and register one for a security key. A static
// module (the portal's CSP allows no inline script); it talks to the API's passkey routes only.
//
//  - [data-passkey-sign-in]: a button on the sign-in page. Status in [data-passkey-status]
//    inside the nearest [data-passkey-piece].
//  - [data-passkey-register] (data-device, data-csrf, data-reload): the Register a passkey piece
//    (templates/portal/passkey_register.html). When done it reloads the page (data-reload) or
//    dispatches `lanyard:passkey-registered` on the piece with the new passkey as detail.

const b64 = {
  decode(text) {
    const s = text.replace(/-/g, '+').replace(/_/g, '/');
    const bin = atob(s + '='.repeat((4 - (s.length % 4)) % 4));
    return Uint8Array.from(bin, (c) => c.charCodeAt(0)).buffer;
  },
  encode(buffer) {
    const bytes = new Uint8Array(buffer);
    let bin = '';
    for (const b of bytes) bin += String.fromCharCode(b);
    return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  },
};

function status(el, text, isError) {
  const piece = el.closest('[data-passkey-piece]');
  const out = piece && piece.querySelector('[data-passkey-status]');
  if (!out) return;
  out.textContent = text;
  out.classList.toggle('error-text', Boolean(isError));
}

async function post(url, body, csrf) {
  const headers = { 'content-type': 'application/json' };
  if (csrf) headers['x-csrf-token'] = csrf;
  const resp = await fetch(url, {
    method: 'POST', headers, credentials: 'same-origin', body: JSON.stringify(body ?? {}),
  });
  let data = null;
  try { data = await resp.json(); } catch { data = null; }
  if (!resp.ok) {
    throw new Error((data && data.error) || `the server answered ${resp.status}`);
  }
  return data;
}

/** What a failed browser call means for the person at the keyboard. */
function explain(e) {
  switch (e && e.name) {
    case 'NotAllowedError':
      return 'The browser or the security key did not complete the request (cancelled, timed out, or no matching passkey). Try again.';
    case 'InvalidStateError':
      return 'This security key already holds a passkey of yours for Lanyard.';
    case 'SecurityError':
      return 'The browser refused: passkeys work only at Lanyard\'s public address.';
    case 'NotSupportedError':
      return 'This browser or key does not support the passkey Lanyard asks for (ES256, discoverable).';
    default:
      return (e && e.message) || 'Something went wrong.';
  }
}

function creationOptions(o) {
  return {
    ...o,
    challenge: b64.decode(o.challenge),
    user: { ...o.user, id: b64.decode(o.user.id) },
    excludeCredentials: (o.excludeCredentials || []).map((c) => ({ ...c, id: b64.decode(c.id) })),
  };
}

function requestOptions(o) {
  return {
    ...o,
    challenge: b64.decode(o.challenge),
    allowCredentials: (o.allowCredentials || []).map((c) => ({ ...c, id: b64.decode(c.id) })),
  };
}

async function register(button) {
  const device = button.dataset.device;
  const csrf = button.dataset.csrf;
  button.disabled = true;
  try {
    status(button, 'Asking the server to start…');
    const options = await post('/api/v1/me/passkeys/registration-options', { device }, csrf);
    status(button, 'Touch your security key now (enter its PIN if asked).');
    const cred = await navigator.credentials.create({ publicKey: creationOptions(options.publicKey) });
    const r = cred.response;
    const body = {
      credential: {
        id: cred.id,
        rawId: b64.encode(cred.rawId),
        type: cred.type,
        response: {
          clientDataJSON: b64.encode(r.clientDataJSON),
          attestationObject: b64.encode(r.attestationObject),
        },
      },
    };
    const passkey = await post('/api/v1/me/passkeys', body, csrf);
    status(button, 'Passkey registered. You can now sign in with this security key.');
    const piece = button.closest('[data-passkey-piece]');
    if (piece) piece.dispatchEvent(new CustomEvent('lanyard:passkey-registered', { detail: passkey, bubbles: true }));
    if (button.dataset.reload !== undefined) window.location.reload();
  } catch (e) {
    status(button, `Not registered: ${explain(e)}`, true);
  } finally {
    button.disabled = false;
  }
}

async function signIn(button) {
  button.disabled = true;
  try {
    status(button, 'Touch your security key now (enter its PIN if asked).');
    const options = await post('/api/v1/passkeys/sign-in/options');
    const cred = await navigator.credentials.get({ publicKey: requestOptions(options.publicKey) });
    const r = cred.response;
    await post('/api/v1/passkeys/sign-in', {
      id: cred.id,
      rawId: b64.encode(cred.rawId),
      type: cred.type,
      response: {
        clientDataJSON: b64.encode(r.clientDataJSON),
        authenticatorData: b64.encode(r.authenticatorData),
        signature: b64.encode(r.signature),
        userHandle: r.userHandle ? b64.encode(r.userHandle) : null,
      },
    });
    status(button, 'Signed in.');
    window.location.assign('/');
  } catch (e) {
    status(button, `Not signed in: ${explain(e)}`, true);
    button.disabled = false;
  }
}

function ready() {
  const supported = typeof window.PublicKeyCredential === 'function' && navigator.credentials;
  for (const b of document.querySelectorAll('[data-passkey-register], [data-passkey-sign-in]')) {
    if (!supported) {
      b.disabled = true;
      status(b, 'This browser does not support passkeys.', true);
      continue;
    }
    b.addEventListener('click', () => (b.matches('[data-passkey-sign-in]') ? signIn(b) : register(b)));
  }
}

ready();
