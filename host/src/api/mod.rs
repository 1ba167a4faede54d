pub mod auth;
pub mod limits;
