//! TEMPORARY stub, replaced by the chunk assembler from branch `proto`.
#![allow(missing_docs)]
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::ChunkPosition;

#[derive(Debug, Clone)]
pub struct ChunkLimits {
    pub max_parts: u32,
    pub expiry: Duration,
}
impl Default for ChunkLimits {
    fn default() -> Self {
        ChunkLimits {
            max_parts: 64,
            expiry: Duration::from_secs(10),
        }
    }
}
#[derive(Debug)]
pub enum ChunkOutcome {
    Complete(Bytes),
    Pending,
    Duplicate,
}
#[derive(Debug, thiserror::Error)]
#[error("chunk error")]
pub struct ChunkError;
#[derive(Debug, Default)]
pub struct ChunkAssembler {
    parts: std::collections::HashMap<String, Vec<Option<Bytes>>>,
}
impl ChunkAssembler {
    pub fn new(_limits: ChunkLimits) -> Self {
        Self::default()
    }
    pub fn accept(
        &mut self,
        message_id: &str,
        position: ChunkPosition,
        part: Bytes,
        _now: Instant,
    ) -> Result<ChunkOutcome, ChunkError> {
        if position.sum == 1 {
            return Ok(ChunkOutcome::Complete(part));
        }
        let e = self
            .parts
            .entry(message_id.to_string())
            .or_insert_with(|| vec![None; position.sum as usize]);
        if e.len() != position.sum as usize {
            return Err(ChunkError);
        }
        if e[position.seq as usize].is_some() {
            return Ok(ChunkOutcome::Duplicate);
        }
        e[position.seq as usize] = Some(part);
        if e.iter().all(|p| p.is_some()) {
            let e = self.parts.remove(message_id).unwrap_or_default();
            let mut out = Vec::new();
            for p in e.into_iter().flatten() {
                out.extend_from_slice(&p);
            }
            return Ok(ChunkOutcome::Complete(out.into()));
        }
        Ok(ChunkOutcome::Pending)
    }
    pub fn expire(&mut self, _now: Instant) -> usize {
        0
    }
}
