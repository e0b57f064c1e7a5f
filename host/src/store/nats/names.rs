//! How evhost's names become NATS names: subject tokens, consumer names, KV keys and
//! bucket names each allow fewer characters than a plugin name, an event id or a plugin's
//! key may hold, so they are escaped reversibly.

use sha2::{Digest as _, Sha256};

/// `text` as one subject token, consumer name or KV key: `[A-Za-z0-9_-]` stay, every other
/// byte becomes `=XX` (its hex value). Reversible with [`decode`]; never empty.
pub(super) fn encode(text: &str) -> String {
    if text.is_empty() {
        return "=".to_owned();
    }
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("={byte:02X}"));
        }
    }
    out
}

/// The text [`encode`] made `encoded` from; `None` if it is not such a text.
pub(super) fn decode(encoded: &str) -> Option<String> {
    if encoded == "=" {
        return Some(String::new());
    }
    let mut bytes = Vec::with_capacity(encoded.len());
    let mut rest = encoded.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        if first == b'=' {
            let hex = tail.get(..2)?;
            bytes.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(first);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

/// A bucket name (`[A-Za-z0-9_-]`) for `namespace` under `stream`: the name itself when it
/// is made of letters, digits and dashes, else `x_` and its hex bytes.
pub(super) fn bucket(stream: &str, namespace: &str) -> String {
    let plain = !namespace.is_empty() && namespace.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if plain {
        format!("{stream}_kv_{namespace}")
    } else {
        format!("{stream}_kv_x_{}", hex::encode(namespace))
    }
}

/// The `Nats-Msg-Id` an event is published under: the same for every publish of one
/// `source` + `id`, so the stream stores it once within its duplicate window.
pub(super) fn event_msg_id(source: &str, id: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(source.as_bytes());
    hash.update([0]);
    hash.update(id.as_bytes());
    format!("ev:{}", hex::encode(&hash.finalize()[..16]))
}

/// Which of `partitions` an event with ordering key `key` goes to: the same in every
/// process (FNV-1a, not the std hasher, which is seeded per process).
pub(super) fn partition(key: &str, partitions: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % u64::from(partitions)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_text_survives_encoding_and_uses_only_safe_characters() {
        for text in ["", "plain-name_1", "seen:0190-ab", "a.b c/d=e", "ünïcode ✓", "="] {
            let encoded = encode(text);
            assert!(
                encoded
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'='),
                "{encoded}"
            );
            assert_eq!(decode(&encoded).as_deref(), Some(text));
        }
        assert_eq!(decode("=G1"), None, "not hex");
        assert_eq!(decode("ab="), None, "cut short");
    }

    #[test]
    fn bucket_names_are_distinct_and_valid() {
        assert_eq!(bucket("EVHOST", "user-projection"), "EVHOST_kv_user-projection");
        assert_ne!(bucket("EVHOST", "a_b"), bucket("EVHOST", "a-b"));
        assert!(
            bucket("EVHOST", "a_b.c")
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        );
    }

    #[test]
    fn partitions_are_stable_and_spread() {
        assert_eq!(partition("order-1", 16), partition("order-1", 16));
        let used: std::collections::HashSet<u32> =
            (0..200).map(|i| partition(&format!("k{i}"), 16)).collect();
        assert_eq!(used.len(), 16);
    }
}
