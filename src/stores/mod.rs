//! The stores offload can move, one module each. A store implements [`crate::core::Store`]:
//! it lists units, prepares the target, copies one batch after a cursor and digests key ranges.

pub mod mongodb;
pub mod mysql;
pub mod objects;
pub mod redis;
