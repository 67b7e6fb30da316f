//! Socket-level facts the kernel knows: original destinations of redirected connections,
//! address ranges, and the options set on upstream sockets.
pub mod cidr;
pub mod conn;
pub mod orig_dst;
pub mod own;
