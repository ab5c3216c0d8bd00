//! API keys are stored only as SHA-256 hashes (`sha256:<hex>`). Keys are
//! random secrets, not passwords, so an unsalted fast hash is the usual choice
//! (as for GitHub or Stripe tokens): it keeps the file useless to a reader.
//! A presented key is compared with every stored hash in constant time.

use anyhow::bail;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

const PREFIX: &str = "sha256:";

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    pub fn of(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let Some(hex) = text.strip_prefix(PREFIX) else {
            bail!("an API key hash starts with `{PREFIX}` (make one with `realm-host keys hash`)");
        };
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("an API key hash is `{PREFIX}` and 64 hex digits");
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)?;
        }
        Ok(Self(bytes))
    }
}

impl std::fmt::Display for KeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(PREFIX)?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// Stored key hashes, each naming an owner (a tenant's index).
pub struct KeyRing {
    entries: Vec<(KeyHash, u32)>,
}

impl KeyRing {
    pub fn new(entries: Vec<(KeyHash, u32)>) -> Self {
        Self { entries }
    }

    /// The owner of `key`. Every stored hash is compared, without branching on
    /// the bytes, so the time taken says nothing about which hash came close.
    pub fn owner(&self, key: &str) -> Option<u32> {
        let presented = KeyHash::of(key);
        let mut found = subtle::Choice::from(0);
        let mut owner = 0u32;
        for (hash, index) in &self.entries {
            let equal = hash.0.ct_eq(&presented.0);
            owner.conditional_assign(index, equal);
            found |= equal;
        }
        bool::from(found).then_some(owner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_prints_and_parses_back() {
        let hash = KeyHash::of("foo");
        let text = hash.to_string();
        assert_eq!(
            text,
            "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
        );
        assert!(KeyHash::parse(&text).is_ok_and(|h| h == hash));
        assert!(KeyHash::parse("sha256:zz").is_err());
        assert!(KeyHash::parse("md5:00").is_err());
    }

    #[test]
    fn keys_find_their_owner_and_nothing_else() {
        let ring = KeyRing::new(vec![(KeyHash::of("alpha"), 0), (KeyHash::of("beta"), 1)]);
        assert_eq!(ring.owner("alpha"), Some(0));
        assert_eq!(ring.owner("beta"), Some(1));
        assert_eq!(ring.owner("gamma"), None);
        assert_eq!(ring.owner(""), None);
    }
}
