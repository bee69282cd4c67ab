//! The admission side of hami-controller: the mutating webhook (`/webhook`,
//! AdmissionReview v1 over HTTPS), HAMi's extended ResourceQuota, and the
//! webhook's TLS server.

pub mod dra;
pub mod json_patch;
pub mod mutate;
pub mod quota;
pub mod review;
pub mod tls;
