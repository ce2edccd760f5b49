//! Conversions between wire messages and core types.
