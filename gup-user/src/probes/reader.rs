//! Reads the in-kernel aggregation maps into a [`Snapshot`].
//!
//! The programs aggregate per CPU; a read sums the CPUs. Reading costs one
//! syscall per API and never stalls the probes.

use aya::maps::{HashMap, MapData, PerCpuArray, StackTraceMap};
use gup_common::{ApiStats, AttribKey, AttribValue, PinRecord, API_COUNT, DIAG_COUNT};

use crate::model::counters::Snapshot;

/// Errors reading the maps.
#[derive(Debug, thiserror::Error)]
#[error("cannot read gupwatch's BPF map {map}: {source}")]
pub struct ReadError {
    /// Which map.
    pub map: &'static str,
    /// The error from the map.
    #[source]
    pub source: aya::maps::MapError,
}

/// Handles on the maps user space reads.
pub struct StatsMaps {
    api_stats: PerCpuArray<MapData, ApiStats>,
    diag: PerCpuArray<MapData, u64>,
    attrib: HashMap<MapData, AttribKey, AttribValue>,
    stacks: StackTraceMap<MapData>,
    errnos: HashMap<MapData, u32, u64>,
    pins: HashMap<MapData, u64, PinRecord>,
    exited: HashMap<MapData, u32, u64>,
    unbalanced: HashMap<MapData, u64, u64>,
    i915: HashMap<MapData, u64, gup_common::i915::I915Object>,
    /// The hold-time histograms and the stack classes they need.
    pub hold: crate::model::holdtime::HoldMaps,
}

impl StatsMaps {
    /// Takes the maps out of a loaded object.
    pub(crate) fn take(ebpf: &mut aya::Ebpf) -> Result<StatsMaps, String> {
        let mut get = |name: &str| ebpf.take_map(name).ok_or_else(|| format!("map {name} missing"));
        let api_stats = PerCpuArray::try_from(get("API_STATS")?).map_err(|e| e.to_string())?;
        let diag = PerCpuArray::try_from(get("DIAG")?).map_err(|e| e.to_string())?;
        let attrib = HashMap::try_from(get("ATTRIB")?).map_err(|e| e.to_string())?;
        let stacks = StackTraceMap::try_from(get("STACKS")?).map_err(|e| e.to_string())?;
        let errnos = HashMap::try_from(get("ERRNOS")?).map_err(|e| e.to_string())?;
        let pins = HashMap::try_from(get("PINS")?).map_err(|e| e.to_string())?;
        let exited = HashMap::try_from(get("EXITED")?).map_err(|e| e.to_string())?;
        let unbalanced = HashMap::try_from(get("UNBALANCED")?).map_err(|e| e.to_string())?;
        let i915 = HashMap::try_from(get("I915_OBJECTS")?).map_err(|e| e.to_string())?;
        let hold = crate::model::holdtime::HoldMaps::take(ebpf)?;
        Ok(StatsMaps { api_stats, diag, attrib, stacks, errnos, pins, exited, unbalanced, i915, hold })
    }

    /// Reads the i915 userptr objects, by address.
    pub fn i915_objects(&self) -> Vec<(u64, gup_common::i915::I915Object)> {
        self.i915.iter().filter_map(Result::ok).collect()
    }

    /// Reads the pin tracking maps (one syscall pair per entry: call it for
    /// leak reports, not on every refresh).
    pub fn tracking(&self) -> crate::model::leaks::TrackingMaps {
        crate::model::leaks::TrackingMaps {
            pins: self.pins.iter().filter_map(Result::ok).collect(),
            exited: self.exited.iter().filter_map(Result::ok).collect(),
            unbalanced: self.unbalanced.iter().filter_map(Result::ok).collect(),
        }
    }

    /// The instruction pointers of a captured kernel stack, innermost first.
    pub fn stack(&self, id: i64) -> Option<Vec<u64>> {
        let id = u32::try_from(id).ok()?;
        let st = self.stacks.get(&id, 0).ok()?;
        Some(st.frames().iter().map(|f| f.ip).collect())
    }

    /// Reads and sums every counter.
    pub fn snapshot(&self) -> Result<Snapshot, ReadError> {
        let mut snap = Snapshot::default();
        for i in 0..API_COUNT {
            let per_cpu = self
                .api_stats
                .get(&(i as u32), 0)
                .map_err(|source| ReadError { map: "API_STATS", source })?;
            for cpu in per_cpu.iter() {
                crate::model::counters::accumulate(&mut snap.apis[i], cpu);
            }
        }
        for i in 0..DIAG_COUNT {
            let per_cpu = self.diag.get(&(i as u32), 0).map_err(|source| ReadError { map: "DIAG", source })?;
            snap.diag[i] = per_cpu.iter().sum();
        }
        snap.errnos = self
            .errnos
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| ((k >> 16, k & 0xffff), v))
            .collect();
        // Entries inserted while we iterate may be missed this round and
        // seen the next; an entry that fails to read is skipped likewise.
        snap.attrib = self.attrib.iter().filter_map(Result::ok).collect();
        Ok(snap)
    }
}
