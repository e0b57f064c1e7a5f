//! Tries to reach outside its sandbox. Succeeding is a failure of the host, so escaping
//! returns `Ok` (which the tests flag) and being denied returns a `reject` saying how.

use evhost_guest::{Event, Handler, HandlerError, Metadata, export_handler};

struct OpenFile;

impl Handler for OpenFile {
    fn metadata() -> Metadata {
        Metadata::new("open-file", env!("CARGO_PKG_VERSION")).subscribe("*")
    }

    fn handle(_event: Event) -> Result<(), HandlerError> {
        let file = std::fs::read_to_string("/etc/hostname");
        let environment = std::env::vars().count();
        match file {
            Err(e) if environment == 0 => Err(HandlerError::reject(format!(
                "denied: /etc/hostname: {e}; no environment"
            ))),
            _ => Ok(()),
        }
    }
}

export_handler!(OpenFile);
