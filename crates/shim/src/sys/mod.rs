//! Every raw Linux call of the shim lives below this module, each `unsafe`
//! block with its SAFETY argument. The rest of the crate calls safe wrappers.

pub mod cgroup;
pub mod confine;
pub mod mount;
pub mod netns;
pub mod process;
