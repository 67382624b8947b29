//! One function per command, grouped by what they act on.

pub mod app;
pub mod check;
pub mod keys;
pub mod live;
pub mod load;
