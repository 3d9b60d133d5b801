//! The identity under which a call is tracked.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

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
///
/// The parts are shared (`Arc`): the tracker's indexes and outputs each hold the key of a
/// call, and a clone per message must not cost an allocation.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CallKey {
    /// The SIP Call-ID, shared by every message of the call.
    pub call_id: Arc<str>,
    /// The From-tag of the initial INVITE (empty for an RFC 2543 caller that sent none).
    pub from_tag: Arc<str>,
}

impl CallKey {
    pub fn new(call_id: &str, from_tag: &str) -> Self {
        CallKey {
            call_id: call_id.into(),
            from_tag: from_tag.into(),
        }
    }

    pub(crate) fn as_ref(&self) -> KeyRef<'_> {
        KeyRef {
            call_id: &self.call_id,
            from_tag: &self.from_tag,
        }
    }
}

impl Hash for CallKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_ref().hash(state);
    }
}

/// A [`CallKey`] borrowed from a message, to look a call up without copying its Call-ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct KeyRef<'a> {
    pub call_id: &'a str,
    pub from_tag: &'a str,
}

impl hashbrown::Equivalent<CallKey> for KeyRef<'_> {
    fn equivalent(&self, key: &CallKey) -> bool {
        *self == key.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn a_borrowed_key_hashes_and_compares_as_the_owned_one() {
        let s = std::hash::RandomState::new();
        let cases = [
            ("a@h", "1"),
            ("a@h", ""),
            ("", "x"),
            ("ab", "c"),
            ("a", "bc"),
        ];
        for (call_id, from_tag) in cases {
            let owned = CallKey::new(call_id, from_tag);
            let borrowed = KeyRef { call_id, from_tag };
            assert_eq!(s.hash_one(&owned), s.hash_one(borrowed), "{owned:?}");
            assert!(hashbrown::Equivalent::equivalent(&borrowed, &owned));
        }
        // The parts are kept apart: moving a character across the boundary is another key.
        let ab_c = KeyRef {
            call_id: "ab",
            from_tag: "c",
        };
        assert!(!hashbrown::Equivalent::equivalent(
            &ab_c,
            &CallKey::new("a", "bc")
        ));
        assert_ne!(s.hash_one(ab_c), s.hash_one(CallKey::new("a", "bc")));
    }
}
