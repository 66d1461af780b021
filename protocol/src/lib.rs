//! What keygate and its control plane must agree on, defined once: the snapshot and delta wire
//! schema ([`wire`]), API key secrets and their hashes ([`secret`]), the scope grammar
//! ([`scopes`]), the id alphabet and limit rules ([`ids`]), the Ed25519 signature over
//! snapshot bodies ([`signature`]), and access tokens ([`tokens`]).

pub mod ids;
pub mod scopes;
pub mod secret;
pub mod signature;
pub mod tokens;
pub mod wire;
