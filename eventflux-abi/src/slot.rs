//! The value of an engine thread's CPU slot (probe `cpu_slot`): which query and stage the thread
//! is executing, written by the engine at every batch and stage boundary while a tool is attached
//! to `cpu_slot`, read by a sampling profiler from the interrupted thread. The query id is in
//! the high 32 bits; the low 32 bits are the state: [`NONE`], [`QUERY`],
//! `STAGE_BASE + Stage code`, or [`IDLE`] (then the high bits name the pool, not a query).

use crate::codes::Stage;
use crate::components::ComponentOp;

/// Outside any query (the whole slot is 0): engine overhead, sources, idle spinning, I/O.
pub const NONE: u32 = 0;
/// Inside a query batch, outside its named stages.
pub const QUERY: u32 = 1;
/// Inside a stage: this plus the stage's code.
pub const STAGE_BASE: u32 = 2;
/// Idle in a worker pool: a consumer spinning or polling for work that has none (the high 32
/// bits: the pool's component id, e.g. the junction's, or `NONE`). Spinning costs CPU that
/// belongs to no query, yet is not "outside the engine's work" either: it is the price of the
/// pool's latency.
pub const IDLE: u32 = 0xFFFF;

/// Inside a component operation (a join probe, a table lookup): this plus the op's code; the
/// high bits keep the query the thread was in, `NONE` (0xffffffff) outside any.
pub const OP_BASE: u32 = 0x100;

/// The slot value of `slot` with its state turned to component operation `op`.
#[inline(always)]
pub const fn encode_op(slot: u64, op: ComponentOp) -> u64 {
    let query = if slot as u32 == NONE || slot as u32 == IDLE { crate::NONE as u64 } else { slot >> 32 };
    (query << 32) | (OP_BASE + op.code()) as u64
}

/// The slot value of a thread idle in `pool`.
#[inline(always)]
pub const fn encode_idle(pool: u32) -> u64 {
    ((pool as u64) << 32) | IDLE as u64
}

/// The slot value for `query` in `stage` (`None`: the query's own code).
#[inline(always)]
pub const fn encode(query: u32, stage: Option<Stage>) -> u64 {
    let state = match stage {
        None => QUERY,
        Some(s) => STAGE_BASE + s.code(),
    };
    ((query as u64) << 32) | state as u64
}

/// What a slot value says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Where {
    /// Outside any query.
    None,
    /// In a query's own code, outside its stages.
    Query(u32),
    /// In a stage of a query.
    Stage(u32, Stage),
    /// Idle in a pool (its id).
    Idle(u32),
    /// In a component operation, inside a query (`NONE`: outside any).
    Op(u32, ComponentOp),
    /// A state this build does not know (a newer engine): query and raw state.
    Unknown(u32, u32),
}

/// Decodes a slot value.
pub fn decode(value: u64) -> Where {
    let (query, state) = ((value >> 32) as u32, value as u32);
    match state {
        NONE => Where::None,
        QUERY => Where::Query(query),
        IDLE => Where::Idle(query),
        s if s >= OP_BASE => match ComponentOp::from_code(s - OP_BASE) {
            Some(op) => Where::Op(query, op),
            None => Where::Unknown(query, s),
        },
        s => match Stage::from_code(s - STAGE_BASE) {
            Some(stage) => Where::Stage(query, stage),
            None => Where::Unknown(query, s),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_values_decode_back() {
        assert_eq!(decode(0), Where::None);
        assert_eq!(decode(encode(7, None)), Where::Query(7));
        for &s in Stage::ALL {
            assert_eq!(decode(encode(u32::MAX, Some(s))), Where::Stage(u32::MAX, s));
        }
        assert_eq!(decode((3 << 32) | 99), Where::Unknown(3, 99));
        assert_eq!(decode(encode_idle(5000)), Where::Idle(5000));
        assert_eq!(
            decode(encode_op(encode(4, None), ComponentOp::TableLookup)),
            Where::Op(4, ComponentOp::TableLookup)
        );
        assert_eq!(decode(encode_op(0, ComponentOp::SinkPublish)), Where::Op(crate::NONE, ComponentOp::SinkPublish));
        assert_ne!(encode(0, None), 0, "query 0 is not 'outside any query'");
    }
}
