//! The trust maps: trusted sources (`trusted`), the trusted and overload
//! budgets (`trust_config`), the packets the limiter saw (`sip_packets`,
//! summed for overload), and the overload flag in the program's `config`.
//! Opened apart from `maps::KernelMaps`: the CLI's ban commands need none
//! of them.
use crate::kernel::maps::rate_key_net;
use anyhow::{anyhow, Context as _, Result};
use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray};
use common::{
    map_name, rate_key_v4, rate_key_v6, Config, RateKey, TrustConfig, TrustEntry, CONFIG_OVERLOADED,
};
use ipnet::IpNet;
use std::{net::IpAddr, path::Path};

/// How long the program holds the overload flag without a renewal: five
/// of the daemon's 200 ms samples.
pub const OVERLOAD_LEASE: std::time::Duration = std::time::Duration::from_secs(1);

pub struct TrustMaps {
    trusted: HashMap<MapData, RateKey, TrustEntry>,
    config: Array<MapData, TrustConfig>,
    sip_packets: PerCpuArray<MapData, u64>,
    program_config: Array<MapData, Config>,
}

/// The key the program looks a source up by: the limiter's (an IPv4
/// address, an IPv6 /64).
pub fn trust_key(addr: IpAddr) -> RateKey {
    match addr {
        IpAddr::V4(a) => rate_key_v4(a.octets()),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => rate_key_v4(v4.octets()),
            None => rate_key_v6(a.octets()),
        },
    }
}

/// The network a trust key stands for (`192.0.2.1/32`, `2001:db8::/64`).
pub fn trust_net(key: &RateKey) -> IpNet {
    rate_key_net(key)
}

impl TrustMaps {
    /// Opens the trust maps pinned in `pin_dir` (made by `sipguard run`).
    pub fn open(pin_dir: &Path) -> Result<Self> {
        let open = |name: &str| -> Result<MapData> {
            let path = pin_dir.join(name);
            MapData::from_pin(&path).with_context(|| {
                format!(
                    "cannot open pinned map {} (start `sipguard run` once: it makes it)",
                    path.display()
                )
            })
        };
        Ok(Self {
            trusted: HashMap::try_from(Map::HashMap(open(map_name::TRUSTED)?))?,
            config: Array::try_from(Map::Array(open(map_name::TRUST_CONFIG)?))?,
            sip_packets: PerCpuArray::try_from(Map::PerCpuArray(open(map_name::SIP_PACKETS)?))?,
            program_config: Array::try_from(Map::Array(open(map_name::CONFIG)?))?,
        })
    }

    /// Trusts the source key of `addr` until `expires_at_ns` (0: no end).
    pub fn trust(&mut self, key: RateKey, entry: TrustEntry) -> Result<()> {
        self.trusted.insert(key, entry, 0).map_err(|e| match &e {
            MapError::SyscallError(s)
                if matches!(s.io_error.raw_os_error(), Some(libc::E2BIG | libc::ENOSPC)) =>
            {
                anyhow!("the kernel's trusted map is full")
            }
            _ => anyhow::Error::new(e).context("cannot write the trusted map"),
        })
    }

    /// Ends the trust of `key`; false when it was not trusted.
    pub fn untrust(&mut self, key: &RateKey) -> Result<bool> {
        match self.trusted.remove(key) {
            Ok(()) => Ok(true),
            Err(MapError::KeyNotFound) => Ok(false),
            Err(MapError::SyscallError(s)) if s.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Every entry of the trusted map.
    pub fn entries(&self) -> Result<Vec<(RateKey, TrustEntry)>> {
        self.trusted
            .iter()
            .map(|item| item.map_err(Into::into))
            .collect()
    }

    pub fn set_config(&mut self, config: TrustConfig) -> Result<()> {
        Ok(self.config.set(0, config, 0)?)
    }

    pub fn config(&self) -> Result<TrustConfig> {
        Ok(self.config.get(&0, 0)?)
    }

    /// Packets the limiter saw since the program's maps were made, summed
    /// over CPUs (each CPU counts its own: no shared write per packet).
    pub fn sip_packets(&self) -> Result<u64> {
        Ok(self
            .sip_packets
            .get(&0, 0)?
            .iter()
            .fold(0u64, |a, b| a.wrapping_add(*b)))
    }

    /// Sets or clears the overload flag in the program's settings, leaving
    /// the rest as the daemon last wrote it, with its lease (see
    /// `renew_overload`).
    pub fn set_overloaded(&mut self, on: bool) -> Result<()> {
        self.renew_overload(on)?;
        let mut cfg = self.program_config.get(&0, 0)?;
        if on {
            cfg.flags |= CONFIG_OVERLOADED;
        } else {
            cfg.flags &= !CONFIG_OVERLOADED;
        }
        Ok(self.program_config.set(0, cfg, 0)?)
    }

    /// The program holds the overload flag for `OVERLOAD_LEASE` from now
    /// (none when `on` is false): renewed every sample while overloaded, it
    /// lapses by itself when no daemon renews it (stopped or killed).
    pub fn renew_overload(&mut self, on: bool) -> Result<()> {
        let mut c = self.config()?;
        c.overload_until_ns = if on {
            crate::kernel::clock::mono_now_ns() + OVERLOAD_LEASE.as_nanos() as u64
        } else {
            0
        };
        self.set_config(c)
    }
}
