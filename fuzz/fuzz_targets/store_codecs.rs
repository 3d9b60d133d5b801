//! The store's value encodings read from any bytes (a damaged file): errors, never panics,
//! and a clean round trip of whatever decodes. Calls in progress are in the tracker's
//! encoding, read back the same way after a restart.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipedge_sip::call::CallSnapshot;

fuzz_target!(|data: &[u8]| {
    sipedge_store::fuzzing::decode_all(data);
    if let Some(call) = CallSnapshot::decode(data) {
        let bytes = call.encode();
        let again = CallSnapshot::decode(&bytes).map(|c| c.encode());
        assert_eq!(again, Some(bytes), "a call in progress changed");
    }
});
