//! Event envelopes (placeholder).
