-- Passkeys (issue 11): WebAuthn credentials of a user's security key, for portal sign-in, and
-- the one-time challenges of the registration and sign-in ceremonies. Keep in step with
-- ../postgres/0011_passkeys.sql. docs/storage.md and docs/passkeys.md describe them.
--
-- A passkey names its device; whether it may be used is decided at sign-in from the device's
-- current state (devices.state), which is never copied here.
CREATE TABLE passkeys (
    id              TEXT NOT NULL PRIMARY KEY,
    credential_id   BLOB NOT NULL,
    user_id         TEXT NOT NULL REFERENCES users (id),
    device_id       TEXT NOT NULL REFERENCES devices (id),
    rp_id           TEXT NOT NULL,
    -- COSE_Key, canonical CBOR.
    public_key      BLOB NOT NULL,
    sign_count      BIGINT NOT NULL,
    aaguid          BLOB NOT NULL,
    attestation     TEXT NOT NULL,
    state           TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    last_used_at    BIGINT,
    removed_at      BIGINT,
    CONSTRAINT passkeys_credential_id_key UNIQUE (credential_id),
    CONSTRAINT passkeys_sign_count_range CHECK (sign_count >= 0 AND sign_count <= 4294967295),
    CONSTRAINT passkeys_aaguid_length CHECK (length(aaguid) = 16)
);
CREATE INDEX passkeys_user ON passkeys (user_id, created_at);
CREATE INDEX passkeys_device ON passkeys (device_id);

-- Only hashes of challenges and of the browser session they are bound to.
CREATE TABLE webauthn_challenges (
    challenge_hash  BLOB NOT NULL PRIMARY KEY,
    purpose         TEXT NOT NULL,
    binding_hash    BLOB NOT NULL,
    user_id         TEXT REFERENCES users (id),
    device_id       TEXT REFERENCES devices (id),
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    used_at         BIGINT
);
CREATE INDEX webauthn_challenges_expires ON webauthn_challenges (expires_at);
