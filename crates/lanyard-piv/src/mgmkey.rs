//! The PIV card application administration key (key reference 9B): 3DES or AES, ECB blocks as
//! SP 800-73 Appendix A uses them for challenge/response authentication.

use aes::{Aes128, Aes192, Aes256};
use cipher::{BlockDecrypt, BlockEncrypt, KeyInit, generic_array::GenericArray};
use des::TdesEde3;
use thiserror::Error;
use zeroize::Zeroizing;

/// The factory management key of PIV cards and YubiKeys (`0102…08` three times).
pub const DEFAULT_MANAGEMENT_KEY: [u8; 24] =
    [1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8];

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MgmKeyError {
    #[error("algorithm 0x{0:02X} is not a management-key algorithm")]
    UnknownAlgorithm(u8),
    #[error("a {alg} key is {expected} bytes, not {got}")]
    WrongLength { alg: MgmAlgorithm, expected: usize, got: usize },
    #[error("block is {got} bytes, the cipher needs {expected}")]
    WrongBlock { expected: usize, got: usize },
}

/// Management-key algorithms (SP 800-78-5 Table 9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MgmAlgorithm {
    TripleDes,
    Aes128,
    Aes192,
    Aes256,
}

impl MgmAlgorithm {
    /// Accepts `00` as the legacy 3DES identifier.
    pub fn from_id(id: u8) -> Result<Self, MgmKeyError> {
        match id {
            0x00 | 0x03 => Ok(Self::TripleDes),
            0x08 => Ok(Self::Aes128),
            0x0A => Ok(Self::Aes192),
            0x0C => Ok(Self::Aes256),
            other => Err(MgmKeyError::UnknownAlgorithm(other)),
        }
    }

    pub fn id(self) -> u8 {
        match self {
            Self::TripleDes => 0x03,
            Self::Aes128 => 0x08,
            Self::Aes192 => 0x0A,
            Self::Aes256 => 0x0C,
        }
    }

    pub fn key_len(self) -> usize {
        match self {
            Self::TripleDes | Self::Aes192 => 24,
            Self::Aes128 => 16,
            Self::Aes256 => 32,
        }
    }

    pub fn block_len(self) -> usize {
        match self {
            Self::TripleDes => 8,
            _ => 16,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::TripleDes => "3DES",
            Self::Aes128 => "AES-128",
            Self::Aes192 => "AES-192",
            Self::Aes256 => "AES-256",
        }
    }
}

impl std::fmt::Display for MgmAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A management key; the bytes are wiped when dropped and never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ManagementKey {
    alg: MgmAlgorithm,
    key: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for ManagementKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ManagementKey({}, <redacted>)", self.alg)
    }
}

impl ManagementKey {
    pub fn new(alg: MgmAlgorithm, key: &[u8]) -> Result<Self, MgmKeyError> {
        if key.len() != alg.key_len() {
            return Err(MgmKeyError::WrongLength { alg, expected: alg.key_len(), got: key.len() });
        }
        Ok(Self { alg, key: Zeroizing::new(key.to_vec()) })
    }

    /// The factory default key with the given algorithm (3DES, or AES-192 on YubiKey 5.7+).
    pub fn factory(alg: MgmAlgorithm) -> Self {
        Self { alg, key: Zeroizing::new(DEFAULT_MANAGEMENT_KEY.to_vec()) }
    }

    /// A fresh random key.
    pub fn random(alg: MgmAlgorithm) -> Self {
        let mut key = Zeroizing::new(vec![0u8; alg.key_len()]);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
        Self { alg, key }
    }

    pub fn algorithm(&self) -> MgmAlgorithm {
        self.alg
    }

    pub fn expose_bytes(&self) -> &[u8] {
        &self.key
    }

    /// Encrypts one block in ECB mode.
    pub fn encrypt_block(&self, block: &[u8]) -> Result<Vec<u8>, MgmKeyError> {
        self.crypt(block, true)
    }

    /// Decrypts one block in ECB mode.
    pub fn decrypt_block(&self, block: &[u8]) -> Result<Vec<u8>, MgmKeyError> {
        self.crypt(block, false)
    }

    fn crypt(&self, block: &[u8], encrypt: bool) -> Result<Vec<u8>, MgmKeyError> {
        let n = self.alg.block_len();
        if block.len() != n {
            return Err(MgmKeyError::WrongBlock { expected: n, got: block.len() });
        }
        let mut buf = block.to_vec();
        fn run<C: BlockEncrypt + BlockDecrypt>(c: C, buf: &mut [u8], encrypt: bool) {
            let b = GenericArray::from_mut_slice(buf);
            if encrypt { c.encrypt_block(b) } else { c.decrypt_block(b) }
        }
        // Key lengths were checked in `new`, so `new_from_slice` cannot fail; map anyway.
        let wrong =
            |_| MgmKeyError::WrongLength { alg: self.alg, expected: self.alg.key_len(), got: self.key.len() };
        match self.alg {
            MgmAlgorithm::TripleDes => {
                run(TdesEde3::new_from_slice(&self.key).map_err(wrong)?, &mut buf, encrypt)
            }
            MgmAlgorithm::Aes128 => run(Aes128::new_from_slice(&self.key).map_err(wrong)?, &mut buf, encrypt),
            MgmAlgorithm::Aes192 => run(Aes192::new_from_slice(&self.key).map_err(wrong)?, &mut buf, encrypt),
            MgmAlgorithm::Aes256 => run(Aes256::new_from_slice(&self.key).map_err(wrong)?, &mut buf, encrypt),
        }
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecb_roundtrip_for_every_algorithm() {
        for alg in [MgmAlgorithm::TripleDes, MgmAlgorithm::Aes128, MgmAlgorithm::Aes192, MgmAlgorithm::Aes256]
        {
            let k = ManagementKey::random(alg);
            let block = vec![0x42; alg.block_len()];
            let c = k.encrypt_block(&block).unwrap();
            assert_ne!(c, block);
            assert_eq!(k.decrypt_block(&c).unwrap(), block);
            assert!(k.encrypt_block(&[0; 3]).is_err());
        }
        assert!(ManagementKey::new(MgmAlgorithm::Aes128, &[0; 24]).is_err());
        assert!(!format!("{:?}", ManagementKey::factory(MgmAlgorithm::TripleDes)).contains("01"));
    }

    #[test]
    fn known_3des_vector() {
        // DES-EDE3 with K1=K2=K3 degenerates to single DES: FIPS 81 test 0123456789ABCDEF key.
        let k = ManagementKey::new(
            MgmAlgorithm::TripleDes,
            &hex::decode("0123456789abcdef0123456789abcdef0123456789abcdef").unwrap(),
        )
        .unwrap();
        let c = k.encrypt_block(&hex::decode("4e6f772069732074").unwrap()).unwrap();
        assert_eq!(hex::encode(c), "3fa40e8a984d4815");
    }
}
