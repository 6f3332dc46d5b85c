//! Hardening from issue 9, one module per item group: untrusted text
//! reaches approvers inert, the gate demands no less than policy, sign-in
//! and reads do not leak, nobody can starve the gate, API keys are listed,
//! revoked and expire.

mod gate;
mod inert;
mod keys;
mod signin;
mod starve;
