//! The `[hep]` table: a HEP v3 listener that feeds call tracking from capture agents.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// `[hep]`: where capture agents (heplify, Kamailio's siptrace, FreeSWITCH…) send HEP3.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HepConfig {
    /// UDP, and TCP on the same port (HEP3 over TCP is length-framed).
    pub listen: SocketAddr,
}

/// What the file must also hold for `[hep]` to work.
pub fn problems(config: &crate::config::Config) -> Vec<String> {
    match (&config.hep, &config.sip) {
        (Some(_), None) => vec![
            "hep.listen: needs a [sip] table (its hops tell a terminal's messages from the \
             Sipserver's, and its call tracking takes the messages)"
                .to_owned(),
        ],
        _ => Vec::new(),
    }
}
