//! The admission side of hami-controller: the mutating webhook (`/webhook`,
//! AdmissionReview v1 over HTTPS), the validating check that keeps the
//! scheduler's annotations its own (`/validate`), HAMi's extended ResourceQuota, and the
//! webhook's TLS server.

pub mod dra;
pub mod json_patch;
pub mod mutate;
pub mod owned;
pub mod privilege;
pub mod quota;
pub mod review;
pub mod tls;
