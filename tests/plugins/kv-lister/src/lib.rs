//! Writes `keys` keys (config, default 100,000) and lists its whole store, `lists` times
//! (config, default 1; 0 lists forever). Keys are `k{index:06}-{event}` so the keys of
//! different events interleave. It stores how many keys the last listing saw under
//! `count`, and rejects the event if a listing missed one of its own keys.

use evhost_guest::{Event, Handler, HandlerError, Metadata, config, export_handler, kv};

struct KvLister;

impl Handler for KvLister {
    fn metadata() -> Metadata {
        Metadata::new("kv-lister", env!("CARGO_PKG_VERSION")).subscribe("Attack")
    }

    fn handle(event: Event) -> Result<(), HandlerError> {
        let number =
            |key: &str, default: u64| config::get(key).and_then(|v| v.parse().ok()).unwrap_or(default);
        let (keys, lists) = (number("keys", 100_000), number("lists", 1));
        let tag = event.subject().unwrap_or("x").to_owned();
        for index in 0..keys {
            kv::set(&format!("k{index:06}-{tag}"), b"1")?;
        }
        let mut round = 0;
        let seen = loop {
            let listed = kv::list_keys()?;
            round += 1;
            if lists != 0 && round >= lists {
                break listed;
            }
        };
        let own = seen
            .iter()
            .filter(|key| key.ends_with(&format!("-{tag}")))
            .count() as u64;
        if own != keys {
            return Err(HandlerError::reject(format!("listed {own} of its {keys} keys")));
        }
        let sorted = seen.windows(2).all(|pair| pair[0] < pair[1]);
        if !sorted {
            return Err(HandlerError::reject("the listing is not in key order"));
        }
        kv::set("count", seen.len().to_string().as_bytes())?;
        Ok(())
    }
}

export_handler!(KvLister);
