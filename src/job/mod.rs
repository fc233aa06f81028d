//! A job folder shared between processes: which one may write to it.

pub mod lock;
