//! service/mod
