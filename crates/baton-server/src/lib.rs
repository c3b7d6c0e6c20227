//! The HTTP server. (Being built.)
