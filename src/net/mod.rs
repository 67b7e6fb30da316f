//! Socket-level facts the kernel knows: original destinations of redirected connections
//! and socket options.
pub mod orig_dst;
