//! MongoDB: message headers, OP_MSG/OP_QUERY/OP_REPLY documents (BSON), compressed messages.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_fuzz::l7::{all, request};
use weft_l7::Protocol;

fuzz_target!(|data: &[u8]| {
    // A request's method is the command (the body document's first element name): `all`
    // checks it is printable and not empty; `path` is its string value (the collection).
    all(&[Protocol::Mongodb], data);
    if let Some(r) = request(Protocol::Mongodb, data) {
        assert!(r.operation.is_none(), "{r:?}");
    }
});
