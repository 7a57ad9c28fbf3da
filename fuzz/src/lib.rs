//! What weft's fuzz targets assert, shared between them: every parser's output keeps the
//! invariants its callers rely on, beyond "does not panic". A failed assertion is a crash
//! to libFuzzer, which keeps the input in `fuzz/artifacts/<target>/`.

pub mod l7;
pub mod observation;
