//! One function per command, grouped by what they act on.

pub mod app;
pub mod fixtures;
pub mod keys;
pub mod live;
pub mod load;
pub mod verify;
