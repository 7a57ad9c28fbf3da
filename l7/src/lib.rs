//! weft-l7
