//! Virtual instruments without a serial protocol: inline absorption spectrometer, CD
//! spectrometer, rotation sampler, robot arm and femtosecond laser, acting on the shared world and
//! taking their time on the lab clock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::optics;
use super::servers::lock;
use super::world::World;
use crate::clock::Clock;
use crate::devices::{
    AbsorptionSpectrometer, CdScan, CdSpectrometer, Laser, RobotArm, RotationSampler, Shutter,
    Spectrum,
};
use crate::error::{check_range, DeviceError};

/// Shared handle the virtual instruments hold.
#[derive(Clone, Debug)]
pub struct Twin {
    pub world: Arc<Mutex<World>>,
    pub clock: Clock,
}

impl Twin {
    fn with<R>(&self, f: impl FnOnce(&mut World) -> R) -> R {
        let mut w = lock(&self.world);
        w.advance_to(self.clock.now_s());
        f(&mut w)
    }
    async fn spend(&self, s: f64) {
        if s.is_finite() && s > 0.0 {
            self.clock.sleep(Duration::from_secs_f64(s)).await;
        }
    }
}

fn fault(device: &str, detail: &str) -> DeviceError {
    DeviceError::Fault {
        device: device.to_string(),
        detail: detail.to_string(),
    }
}

/// Inline UV-Vis at the reactor outlet.
#[derive(Debug)]
pub struct VirtualUv {
    pub name: String,
    pub twin: Twin,
}

#[async_trait]
impl AbsorptionSpectrometer for VirtualUv {
    fn name(&self) -> &str {
        &self.name
    }
    async fn acquire(&self, integration_ms: f64, averages: u32) -> Result<Spectrum, DeviceError> {
        check_range(&self.name, "integration_ms", integration_ms, 1.0, 10_000.0)?;
        check_range(&self.name, "averages", f64::from(averages), 1.0, 100.0)?;
        self.twin
            .spend(integration_ms * f64::from(averages) / 1000.0)
            .await;
        let (wl, a) = self.twin.with(|w| {
            let s = w.stream();
            optics::absorption_spectrum(&s, averages, &mut w.rng.spectra)
        });
        Ok(Spectrum {
            wavelength_nm: wl,
            values: a,
            quantity: "absorbance".into(),
            absorbance: None,
        })
    }
}

/// CD spectrometer with one cuvette holder.
#[derive(Debug)]
pub struct VirtualCd {
    pub name: String,
    pub twin: Twin,
    /// Scan speed, nm/min.
    pub scan_rate_nm_per_min: f64,
}

#[async_trait]
impl CdSpectrometer for VirtualCd {
    fn name(&self) -> &str {
        &self.name
    }
    async fn scan(&self, scan: CdScan) -> Result<Spectrum, DeviceError> {
        check_range(&self.name, "from_nm", scan.start_nm, 190.0, 900.0)?;
        check_range(&self.name, "to_nm", scan.end_nm, 190.0, 900.0)?;
        check_range(&self.name, "step_nm", scan.step_nm, 0.05, 10.0)?;
        check_range(
            &self.name,
            "rate_nm_per_min",
            scan.rate_nm_per_min,
            1.0,
            10_000.0,
        )?;
        if !self.twin.with(|w| w.places.contains_key("cd")) {
            return Err(fault(&self.name, "no cuvette in the sample holder"));
        }
        let averages = 1;
        self.twin
            .spend((scan.end_nm - scan.start_nm).abs() / scan.rate_nm_per_min * 60.0)
            .await;
        let r = self.twin.with(|w| {
            let s = w.places.get("cd").cloned()?;
            let (wl, v) = optics::cd_spectrum(
                &w.landscape,
                &s,
                scan.start_nm,
                scan.end_nm,
                scan.step_nm,
                averages,
                &mut w.rng.spectra,
            );
            let a = optics::absorbance_on(&s, &wl, 1, &mut w.rng.spectra);
            Some((wl, v, a))
        });
        let (wl, v, a) = r.ok_or_else(|| fault(&self.name, "cuvette removed during the scan"))?;
        Ok(Spectrum {
            wavelength_nm: wl,
            values: v,
            quantity: "cd_mdeg".into(),
            absorbance: Some(a),
        })
    }
}

/// Rotation sampler at the reactor outlet.
#[derive(Debug)]
pub struct VirtualSampler {
    pub name: String,
    pub twin: Twin,
    pub slots: u32,
}

#[async_trait]
impl RotationSampler for VirtualSampler {
    fn name(&self) -> &str {
        &self.name
    }
    async fn collect(&self, volume_ul: f64) -> Result<u32, DeviceError> {
        check_range(&self.name, "volume_ul", volume_ul, 1.0, 5000.0)?;
        let (flow, slot) = self.twin.with(|w| {
            let free = (1..=self.slots).find(|s| !w.slots.contains_key(s));
            (w.flow_ul_min(), free)
        });
        let slot = slot.ok_or_else(|| fault(&self.name, "all slots hold a cuvette"))?;
        if flow <= 0.0 {
            return Err(fault(&self.name, "no flow at the outlet to collect"));
        }
        self.collect_into(slot, volume_ul, flow).await?;
        Ok(slot)
    }
    async fn rotate(&self, slot: u32) -> Result<(), DeviceError> {
        check_range(
            &self.name,
            "slot",
            f64::from(slot),
            1.0,
            f64::from(self.slots),
        )?;
        self.twin.spend(2.0).await;
        Ok(())
    }
}

impl VirtualSampler {
    /// Collect into a given slot (replacing a cuvette left there).
    pub async fn collect_into(
        &self,
        slot: u32,
        volume_ul: f64,
        flow_ul_min: f64,
    ) -> Result<(), DeviceError> {
        check_range(
            &self.name,
            "slot",
            f64::from(slot),
            1.0,
            f64::from(self.slots),
        )?;
        self.twin.spend(volume_ul / flow_ul_min * 60.0).await;
        self.twin.with(|w| {
            let s = w.synthesise_outlet();
            w.slots.insert(slot, s);
        });
        Ok(())
    }
}

/// Robot arm moving cuvettes.
#[derive(Debug)]
pub struct VirtualArm {
    pub name: String,
    pub twin: Twin,
    /// Time of one move, s.
    pub move_s: f64,
}

#[async_trait]
impl RobotArm for VirtualArm {
    fn name(&self) -> &str {
        &self.name
    }
    async fn transfer(&self, from: &str, to: &str) -> Result<(), DeviceError> {
        let take = |w: &mut World, place: &str| -> Option<optics::Sample> {
            if let Some(n) = place.strip_prefix("slot") {
                let n: u32 = n.parse().ok()?;
                w.slots.remove(&n)
            } else {
                w.places.remove(place)
            }
        };
        let ok = self.twin.with(|w| {
            if to != "waste" && w.places.contains_key(to) {
                return Err(format!("{to} already holds a cuvette"));
            }
            match take(w, from) {
                Some(s) => {
                    if to != "waste" {
                        w.places.insert(to.to_string(), s);
                    }
                    Ok(())
                }
                None => Err(format!("no cuvette at {from}")),
            }
        });
        ok.map_err(|m| fault(&self.name, &m))?;
        self.twin.spend(self.move_s).await;
        Ok(())
    }
    async fn home(&self) -> Result<(), DeviceError> {
        self.twin.spend(5.0).await;
        Ok(())
    }
    fn occupied(&self, place: &str) -> Option<bool> {
        Some(self.twin.with(|w| {
            match place.strip_prefix("slot") {
                Some(n) => n
                    .parse()
                    .ok()
                    .is_some_and(|n: u32| w.slots.contains_key(&n)),
                None => w.places.contains_key(place),
            }
        }))
    }
}

/// The laser's beam shutter (state in `World::shutters`, closed at start). Opening takes
/// `open_s` of lab time; closing is immediate (it is the safe state).
#[derive(Debug)]
pub struct VirtualShutter {
    pub name: String,
    pub twin: Twin,
    pub open_s: f64,
}

impl VirtualShutter {
    pub fn new(name: String, twin: Twin) -> Self {
        twin.with(|w| w.shutters.insert(name.clone(), false));
        Self {
            name,
            twin,
            open_s: 0.05,
        }
    }
}

#[async_trait]
impl Shutter for VirtualShutter {
    fn name(&self) -> &str {
        &self.name
    }
    async fn open(&self) -> Result<(), DeviceError> {
        self.twin.spend(self.open_s).await;
        self.twin
            .with(|w| w.shutters.insert(self.name.clone(), true));
        Ok(())
    }
    async fn close(&self) -> Result<(), DeviceError> {
        self.twin
            .with(|w| w.shutters.insert(self.name.clone(), false));
        Ok(())
    }
    fn is_open(&self) -> bool {
        self.twin
            .with(|w| w.shutters.get(&self.name).copied().unwrap_or(false))
    }
}

/// Femtosecond laser irradiating the cuvette at the laser stage. With a `shutter`, light reaches
/// the cuvette only while the shutter is open: `irradiate` opens it, doses for the time it stays
/// open, closes it, and fails with an interlock error when something else (the safety kernel)
/// closed it first.
#[derive(Debug)]
pub struct VirtualLaser {
    pub name: String,
    pub twin: Twin,
    pub shutter: Option<Arc<VirtualShutter>>,
}

#[async_trait]
impl Laser for VirtualLaser {
    fn name(&self) -> &str {
        &self.name
    }
    async fn irradiate(&self, wavelength_nm: f64, duration_s: f64) -> Result<(), DeviceError> {
        check_range(&self.name, "wavelength_nm", wavelength_nm, 300.0, 1000.0)?;
        check_range(&self.name, "duration_s", duration_s, 0.0, 3600.0)?;
        if !self.twin.with(|w| w.places.contains_key("laser")) {
            return Err(fault(&self.name, "no cuvette on the laser stage"));
        }
        let dose = |exposed_s: f64| {
            self.twin.with(|w| {
                let World { places, rng, .. } = w;
                if let Some(s) = places.get_mut("laser") {
                    optics::irradiate(s, wavelength_nm, exposed_s, &mut rng.laser);
                }
            })
        };
        let Some(shutter) = &self.shutter else {
            self.twin.spend(duration_s).await;
            dose(duration_s);
            return Ok(());
        };
        shutter.open().await?;
        let mut exposed = 0.0;
        let mut interrupted = false;
        while exposed < duration_s {
            let step = (duration_s - exposed).min(1.0);
            self.twin.spend(step).await;
            if !shutter.is_open() {
                interrupted = true;
                break;
            }
            exposed += step;
        }
        shutter.close().await?;
        if exposed > 0.0 {
            dose(exposed);
        }
        if interrupted {
            return Err(DeviceError::Interlock(format!(
                "{}: shutter {} closed during irradiation after {exposed:.0} s of {duration_s:.0} s",
                self.name, shutter.name
            )));
        }
        Ok(())
    }
    async fn off(&self) -> Result<(), DeviceError> {
        if let Some(s) = &self.shutter {
            s.close().await?;
        }
        Ok(())
    }
}
