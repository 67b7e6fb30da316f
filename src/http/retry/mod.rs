//! Retries as Envoy's router does them: the compiled policy, each request's retry
//! state (conditions, limits, back-off, hosts tried) and the replayable request body.
pub mod policy;
pub mod replay;
pub mod state;

pub use policy::{RetryOn, RetryPolicy};
pub use replay::Replay;
pub use state::{Decision, Failure, RetryState};
