//! The invalid-message and per-method budgets (`sip_limits`) and their
//! per-source state (`sip_rate`). Opened from their pins when used: written
//! at start and on reload, read by `stats`, never on a hot path.
use super::KernelMaps;
use anyhow::{Context as _, Result};
use aya::maps::{Array, HashMap, Map, MapData};
use common::{map_name, SipLimits, SipRateKey, SipRateState};

impl KernelMaps {
    fn sip_map(&self, name: &str) -> Result<MapData> {
        let path = self.pin_dir().join(name);
        MapData::from_pin(&path).with_context(|| format!("cannot open {}", path.display()))
    }

    /// Writes the budgets; all zero turns them off.
    pub fn set_sip_limits(&mut self, limits: SipLimits) -> Result<()> {
        let mut a: Array<MapData, SipLimits> =
            Array::try_from(Map::Array(self.sip_map(map_name::SIP_LIMITS)?))?;
        Ok(a.set(0, limits, 0)?)
    }

    pub fn sip_limits(&self) -> Result<SipLimits> {
        let a: Array<MapData, SipLimits> =
            Array::try_from(Map::Array(self.sip_map(map_name::SIP_LIMITS)?))?;
        Ok(a.get(&0, 0)?)
    }

    /// Every source's state for each budget it was charged to.
    pub fn sip_rate_states(&self) -> Result<Vec<(SipRateKey, SipRateState)>> {
        let m: HashMap<MapData, SipRateKey, SipRateState> =
            HashMap::try_from(Map::LruHashMap(self.sip_map(map_name::SIP_RATE)?))?;
        m.iter().map(|r| Ok(r?)).collect()
    }
}
