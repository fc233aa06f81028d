//! The platform's Meilisearch API key: Tutor derives `MEILISEARCH_API_KEY` from the master key
//! and `MEILISEARCH_API_KEY_UID` (its `uid_master_hash` filter), and a key created on a server
//! with that uid has exactly that value. The reindex creates and checks it; cutover writes it.

use std::fmt::Write as _;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Lowercase hex HMAC-SHA256 of the key uid, keyed by the master key, as Tutor computes it.
pub fn derive(master_key: &str, api_key_uid: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(master_key.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(api_key_uid.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .fold(String::with_capacity(64), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_tutor() {
        // From a config.yml written by tutor 22.0.3 (fixtures/tutor/config.yml).
        assert_eq!(
            derive(
                "4jJLBHkIjkYOJULYvz5MeenB",
                "1b060280-7358-4220-83a1-b904da72a3d4"
            ),
            "d3fc181a1ace66f1225c0193f1cc3db1e63f8318331f0e422909098cf67d4a29"
        );
    }
}
