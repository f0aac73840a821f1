//! Numbers from CTAP 2.1 (§6 commands, §8.2 status codes, §11.3 NFC binding, §11.2 HID binding).

/// The FIDO application identifier (CTAP §11.3.3).
pub const FIDO_AID: [u8; 8] = [0xA0, 0x00, 0x00, 0x06, 0x47, 0x2F, 0x00, 0x01];
/// What SELECT of the FIDO application answers on a CTAP2-only authenticator.
pub const SELECT_FIDO2: &[u8] = b"FIDO_2_0";
/// What it answers when U2F (CTAP1) is present too.
pub const SELECT_U2F: &[u8] = b"U2F_V2";

/// NFCCTAP_MSG: CLA 80, INS 10; P1 80 says the client can poll with NFCCTAP_GETRESPONSE.
pub const NFC_CLA: u8 = 0x80;
pub const NFC_INS_MSG: u8 = 0x10;
pub const NFC_INS_GET_RESPONSE: u8 = 0x11;
pub const NFC_P1_GETRESPONSE_SUPPORTED: u8 = 0x80;
/// NFCCTAP_GETRESPONSE with this P1 cancels the pending command.
pub const NFC_P1_CANCEL: u8 = 0x11;
/// The status word of a command that is still running ("keep-alive"; poll again).
pub const SW_KEEPALIVE: u16 = 0x9100;

/// authenticator* command bytes.
pub mod cmd {
    pub const MAKE_CREDENTIAL: u8 = 0x01;
    pub const GET_ASSERTION: u8 = 0x02;
    pub const GET_INFO: u8 = 0x04;
    pub const CLIENT_PIN: u8 = 0x06;
    pub const RESET: u8 = 0x07;
    pub const GET_NEXT_ASSERTION: u8 = 0x08;
    pub const CREDENTIAL_MANAGEMENT: u8 = 0x0A;
    pub const SELECTION: u8 = 0x0B;
    pub const CONFIG: u8 = 0x0D;
}

/// authenticatorClientPIN subCommand values.
pub mod pin_sub {
    pub const GET_RETRIES: u64 = 0x01;
    pub const GET_KEY_AGREEMENT: u64 = 0x02;
    pub const SET_PIN: u64 = 0x03;
    pub const CHANGE_PIN: u64 = 0x04;
    pub const GET_PIN_TOKEN: u64 = 0x05;
    pub const GET_PIN_UV_AUTH_TOKEN_USING_UV_WITH_PERMISSIONS: u64 = 0x06;
    pub const GET_UV_RETRIES: u64 = 0x07;
    pub const GET_PIN_UV_AUTH_TOKEN_USING_PIN_WITH_PERMISSIONS: u64 = 0x09;
}

/// pinUvAuthToken permission bits (CTAP §6.5.5.7).
pub mod permission {
    pub const MAKE_CREDENTIAL: u8 = 0x01;
    pub const GET_ASSERTION: u8 = 0x02;
    pub const CREDENTIAL_MANAGEMENT: u8 = 0x04;
    pub const BIO_ENROLLMENT: u8 = 0x08;
    pub const LARGE_BLOB_WRITE: u8 = 0x10;
    pub const AUTHENTICATOR_CONFIG: u8 = 0x20;
}

/// authenticatorConfig subCommand values.
pub mod config_sub {
    pub const ENABLE_ENTERPRISE_ATTESTATION: u64 = 0x01;
    pub const TOGGLE_ALWAYS_UV: u64 = 0x02;
    pub const SET_MIN_PIN_LENGTH: u64 = 0x03;
}

/// authenticatorCredentialManagement subCommand values.
pub mod cred_mgmt_sub {
    pub const GET_CREDS_METADATA: u64 = 0x01;
    pub const ENUMERATE_RPS_BEGIN: u64 = 0x02;
    pub const ENUMERATE_RPS_GET_NEXT: u64 = 0x03;
    pub const ENUMERATE_CREDENTIALS_BEGIN: u64 = 0x04;
    pub const ENUMERATE_CREDENTIALS_GET_NEXT: u64 = 0x05;
    pub const DELETE_CREDENTIAL: u64 = 0x06;
    pub const UPDATE_USER_INFORMATION: u64 = 0x07;
}

/// CTAP2 status codes (CTAP §8.2), the first byte of every response.
pub mod status {
    pub const OK: u8 = 0x00;
    pub const INVALID_COMMAND: u8 = 0x01;
    pub const INVALID_PARAMETER: u8 = 0x02;
    pub const INVALID_LENGTH: u8 = 0x03;
    pub const CBOR_UNEXPECTED_TYPE: u8 = 0x11;
    pub const INVALID_CBOR: u8 = 0x12;
    pub const MISSING_PARAMETER: u8 = 0x14;
    pub const LIMIT_EXCEEDED: u8 = 0x15;
    pub const CREDENTIAL_EXCLUDED: u8 = 0x19;
    pub const PROCESSING: u8 = 0x21;
    pub const INVALID_CREDENTIAL: u8 = 0x22;
    pub const USER_ACTION_PENDING: u8 = 0x23;
    pub const OPERATION_PENDING: u8 = 0x24;
    pub const NO_OPERATIONS: u8 = 0x25;
    pub const UNSUPPORTED_ALGORITHM: u8 = 0x26;
    pub const OPERATION_DENIED: u8 = 0x27;
    pub const KEY_STORE_FULL: u8 = 0x28;
    pub const UNSUPPORTED_OPTION: u8 = 0x2B;
    pub const INVALID_OPTION: u8 = 0x2C;
    pub const KEEPALIVE_CANCEL: u8 = 0x2D;
    pub const NO_CREDENTIALS: u8 = 0x2E;
    pub const USER_ACTION_TIMEOUT: u8 = 0x2F;
    pub const NOT_ALLOWED: u8 = 0x30;
    pub const PIN_INVALID: u8 = 0x31;
    pub const PIN_BLOCKED: u8 = 0x32;
    pub const PIN_AUTH_INVALID: u8 = 0x33;
    pub const PIN_AUTH_BLOCKED: u8 = 0x34;
    pub const PIN_NOT_SET: u8 = 0x35;
    pub const PUAT_REQUIRED: u8 = 0x36;
    pub const PIN_POLICY_VIOLATION: u8 = 0x37;
    pub const REQUEST_TOO_LARGE: u8 = 0x39;
    pub const ACTION_TIMEOUT: u8 = 0x3A;
    pub const UP_REQUIRED: u8 = 0x3B;
    pub const UV_BLOCKED: u8 = 0x3C;
    pub const INTEGRITY_FAILURE: u8 = 0x3D;
    pub const INVALID_SUBCOMMAND: u8 = 0x3E;
    pub const UNAUTHORIZED_PERMISSION: u8 = 0x40;
    pub const OTHER: u8 = 0x7F;

    /// The status code's name in the specification, for error messages.
    pub fn name(code: u8) -> &'static str {
        match code {
            OK => "CTAP2_OK",
            INVALID_COMMAND => "CTAP1_ERR_INVALID_COMMAND",
            INVALID_PARAMETER => "CTAP1_ERR_INVALID_PARAMETER",
            INVALID_LENGTH => "CTAP1_ERR_INVALID_LENGTH",
            CBOR_UNEXPECTED_TYPE => "CTAP2_ERR_CBOR_UNEXPECTED_TYPE",
            INVALID_CBOR => "CTAP2_ERR_INVALID_CBOR",
            MISSING_PARAMETER => "CTAP2_ERR_MISSING_PARAMETER",
            LIMIT_EXCEEDED => "CTAP2_ERR_LIMIT_EXCEEDED",
            CREDENTIAL_EXCLUDED => "CTAP2_ERR_CREDENTIAL_EXCLUDED",
            PROCESSING => "CTAP2_ERR_PROCESSING",
            INVALID_CREDENTIAL => "CTAP2_ERR_INVALID_CREDENTIAL",
            USER_ACTION_PENDING => "CTAP2_ERR_USER_ACTION_PENDING",
            OPERATION_PENDING => "CTAP2_ERR_OPERATION_PENDING",
            NO_OPERATIONS => "CTAP2_ERR_NO_OPERATIONS",
            UNSUPPORTED_ALGORITHM => "CTAP2_ERR_UNSUPPORTED_ALGORITHM",
            OPERATION_DENIED => "CTAP2_ERR_OPERATION_DENIED",
            KEY_STORE_FULL => "CTAP2_ERR_KEY_STORE_FULL",
            UNSUPPORTED_OPTION => "CTAP2_ERR_UNSUPPORTED_OPTION",
            INVALID_OPTION => "CTAP2_ERR_INVALID_OPTION",
            KEEPALIVE_CANCEL => "CTAP2_ERR_KEEPALIVE_CANCEL",
            NO_CREDENTIALS => "CTAP2_ERR_NO_CREDENTIALS",
            USER_ACTION_TIMEOUT => "CTAP2_ERR_USER_ACTION_TIMEOUT",
            NOT_ALLOWED => "CTAP2_ERR_NOT_ALLOWED",
            PIN_INVALID => "CTAP2_ERR_PIN_INVALID",
            PIN_BLOCKED => "CTAP2_ERR_PIN_BLOCKED",
            PIN_AUTH_INVALID => "CTAP2_ERR_PIN_AUTH_INVALID",
            PIN_AUTH_BLOCKED => "CTAP2_ERR_PIN_AUTH_BLOCKED",
            PIN_NOT_SET => "CTAP2_ERR_PIN_NOT_SET",
            PUAT_REQUIRED => "CTAP2_ERR_PUAT_REQUIRED",
            PIN_POLICY_VIOLATION => "CTAP2_ERR_PIN_POLICY_VIOLATION",
            REQUEST_TOO_LARGE => "CTAP2_ERR_REQUEST_TOO_LARGE",
            ACTION_TIMEOUT => "CTAP2_ERR_ACTION_TIMEOUT",
            UP_REQUIRED => "CTAP2_ERR_UP_REQUIRED",
            UV_BLOCKED => "CTAP2_ERR_UV_BLOCKED",
            INTEGRITY_FAILURE => "CTAP2_ERR_INTEGRITY_FAILURE",
            INVALID_SUBCOMMAND => "CTAP2_ERR_INVALID_SUBCOMMAND",
            UNAUTHORIZED_PERMISSION => "CTAP2_ERR_UNAUTHORIZED_PERMISSION",
            _ => "CTAP2_ERR_OTHER",
        }
    }
}
