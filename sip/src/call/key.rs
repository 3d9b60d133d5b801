//! The identity under which a call is tracked.

use serde::{Deserialize, Serialize};

/// A tracked call is identified by its Call-ID and the caller's From-tag.
///
/// Why not the RFC 3261 dialog id (Call-ID + both tags): the To-tag does not exist yet at the
/// INVITE, each forked early dialog of one call has its own To-tag, and the new INVITE that
/// answers a 401/407 challenge (RFC 3261 §22.2) or follows it keeps Call-ID and From-tag but
/// gets a fresh transaction. Call-ID + From-tag is what every message of one call shares, so
/// forks and challenges stay one call, as SPEC §5 requires.
///
/// Why not the Call-ID alone: terminals choose Call-IDs, and two terminals with a poor
/// generator can reuse one; the From-tag adds the caller's own randomness so that such calls
/// are not merged into one record.
///
/// Requests sent by the callee (its BYE, its re-INVITE) carry the caller's tag in To, not in
/// From: the tracker looks them up by their To-tag when their From-tag matches no call.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CallKey {
    /// The SIP Call-ID, shared by every message of the call.
    pub call_id: String,
    /// The From-tag of the initial INVITE (empty for an RFC 2543 caller that sent none).
    pub from_tag: String,
}
