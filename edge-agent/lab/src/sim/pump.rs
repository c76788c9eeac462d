//! Pure model of an NE-1000 syringe pump: its command interpreter and syringe mechanics, no I/O.

use crate::ne1000::{format_number, Direction, PumpState, RateUnit, Reply};
use crate::pump_models::PumpModel;

/// One simulated pump with its syringe.
#[derive(Debug, Clone)]
pub struct PumpSim {
    pub address: u8,
    pub diameter_mm: f64,
    pub rate_ul_min: f64,
    /// Target volume of the current run, µL (0 = run until stopped).
    pub volume_ul: f64,
    pub direction: Direction,
    pub running: bool,
    pub infused_ul: f64,
    pub withdrawn_ul: f64,
    /// Liquid in the syringe now, µL.
    pub content_ul: f64,
    pub capacity_ul: f64,
    /// Volume moved since the last RUN.
    run_moved_ul: f64,
    /// Pending alarm code to report once (e.g. `?S`).
    pub alarm: Option<&'static str>,
    /// Highest rate the mechanics can do, µL/min.
    pub max_rate_ul_min: f64,
    /// What flowed out of the syringe in the last `advance` call, µL.
    pub last_infused_ul: f64,
    /// Volume units are mL (`VOLML`) rather than µL.
    pub volume_in_ml: bool,
    /// The model emulated: its diameter range, rate range for the syringe and `VER` reply
    /// (`None`: a generic pump with `max_rate_ul_min`).
    pub model: Option<&'static PumpModel>,
    /// Safe mode's communications time-out, s (0: basic protocol). The port server runs the timer.
    pub safe_timeout_s: u8,
    /// Units of the last rate set.
    pub rate_unit: RateUnit,
}

impl PumpSim {
    /// A pump with a full syringe of `capacity_ul`.
    pub fn new(address: u8, capacity_ul: f64) -> Self {
        Self {
            address,
            diameter_mm: 3.26,
            rate_ul_min: 0.0,
            volume_ul: 0.0,
            direction: Direction::Infuse,
            running: false,
            infused_ul: 0.0,
            withdrawn_ul: 0.0,
            content_ul: capacity_ul,
            capacity_ul,
            run_moved_ul: 0.0,
            alarm: None,
            max_rate_ul_min: 2000.0,
            last_infused_ul: 0.0,
            volume_in_ml: false,
            model: None,
            safe_timeout_s: 0,
            rate_unit: RateUnit::UlPerMin,
        }
    }

    /// Emulate `model` with a syringe of `diameter_mm` fitted.
    pub fn with_model(mut self, model: &'static PumpModel, diameter_mm: f64) -> Self {
        self.model = Some(model);
        self.fit_syringe(diameter_mm);
        self
    }

    fn fit_syringe(&mut self, diameter_mm: f64) {
        self.diameter_mm = diameter_mm;
        if let Some(m) = self.model {
            self.max_rate_ul_min = m.max_rate_ul_min(diameter_mm);
            self.volume_in_ml = m.volume_in_ml(diameter_mm);
        }
    }

    /// Safe mode's time-out expired: stop, and raise the `?T` alarm.
    pub fn comms_timed_out(&mut self) {
        self.running = false;
        self.alarm = Some("?T");
    }

    /// Flow out of the syringe now, µL/min.
    pub fn outflow_ul_min(&self) -> f64 {
        if self.running && self.direction == Direction::Infuse {
            self.rate_ul_min
        } else {
            0.0
        }
    }

    /// Move the plunger for `dt_s` seconds.
    pub fn advance(&mut self, dt_s: f64) {
        self.last_infused_ul = 0.0;
        if !self.running || dt_s <= 0.0 {
            return;
        }
        let mut dv = self.rate_ul_min * dt_s / 60.0;
        if self.volume_ul > 0.0 {
            dv = dv.min((self.volume_ul - self.run_moved_ul).max(0.0));
        }
        match self.direction {
            Direction::Infuse => {
                if dv > self.content_ul {
                    dv = self.content_ul;
                    self.running = false;
                    self.alarm = Some("?S");
                }
                self.content_ul -= dv;
                self.infused_ul += dv;
                self.last_infused_ul = dv;
            }
            Direction::Withdraw => {
                let room = self.capacity_ul - self.content_ul;
                if dv > room {
                    dv = room;
                    self.running = false;
                    self.alarm = Some("?S");
                }
                self.content_ul += dv;
                self.withdrawn_ul += dv;
            }
        }
        self.run_moved_ul += dv;
        if self.volume_ul > 0.0 && self.run_moved_ul >= self.volume_ul - 1e-9 {
            self.running = false;
        }
    }

    fn ul_per_unit(&self) -> f64 {
        if self.volume_in_ml {
            1000.0
        } else {
            1.0
        }
    }

    fn state(&self) -> PumpState {
        match (self.running, self.direction) {
            (false, _) => PumpState::Stopped,
            (true, Direction::Infuse) => PumpState::Infusing,
            (true, Direction::Withdraw) => PumpState::Withdrawing,
        }
    }

    fn reply(&mut self, data: impl Into<String>) -> Reply {
        if let Some(a) = self.alarm.take() {
            return Reply {
                address: self.address,
                state: PumpState::Alarm,
                data: a.to_string(),
            };
        }
        Reply {
            address: self.address,
            state: self.state(),
            data: data.into(),
        }
    }

    /// Interpret one command line (without the trailing CR). `None`: addressed to another pump.
    pub fn handle(&mut self, line: &[u8]) -> Option<Reply> {
        if !line.iter().all(|c| c.is_ascii_graphic() || *c == b' ') {
            return Some(self.reply("?COM"));
        }
        let text = String::from_utf8_lossy(line).trim().to_ascii_uppercase();
        let digits = text.chars().take_while(|c| c.is_ascii_digit()).count();
        let (addr, body) = text.split_at(digits);
        let addr: u8 = if addr.is_empty() {
            0
        } else {
            match addr.parse::<u8>() {
                Ok(a) if digits <= 2 => a,
                _ => return Some(self.reply("?COM")),
            }
        };
        if addr != self.address {
            return None;
        }
        let body = body.trim();
        let (cmd, arg) = body.split_at(body.len().min(3));
        let arg = arg.trim();
        let num = |s: &str| -> Option<f64> {
            if s.is_empty() || s.len() > 5 || s.chars().filter(|c| c.is_ascii_digit()).count() > 4 {
                return None;
            }
            s.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0)
        };
        let r = match cmd {
            "" => self.reply(""),
            "DIA" if arg.is_empty() => {
                let d = format_number(self.diameter_mm).unwrap_or_default();
                self.reply(d)
            }
            "DIA" => match num(arg) {
                Some(v)
                    if (0.1..=50.0).contains(&v)
                        && self.model.is_none_or(|m| {
                            (m.min_diameter_mm..=m.max_diameter_mm).contains(&v)
                        })
                        && !self.running =>
                {
                    self.fit_syringe(v);
                    self.reply("")
                }
                Some(_) if self.running => self.reply("?NA"),
                _ => self.reply("?OOR"),
            },
            "RAT" if arg.is_empty() => {
                let u = self.rate_unit;
                let v = format_number(self.rate_ul_min / u.ul_per_min()).unwrap_or_default();
                self.reply(format!("{v}{}", u.code()))
            }
            "RAT" => {
                let (n, unit) = arg.split_at(arg.len().saturating_sub(2));
                let scale = match unit {
                    "UM" => Some(1.0),
                    "MM" => Some(1000.0),
                    "UH" => Some(1.0 / 60.0),
                    "MH" => Some(1000.0 / 60.0),
                    _ => None,
                };
                let unit = RateUnit::from_code(unit);
                let min = self
                    .model
                    .map_or(0.0, |m| m.min_rate_ul_min(self.diameter_mm));
                match (num(n), scale) {
                    // the manuals: rate units cannot be changed while pumping
                    (Some(_), Some(_)) if self.running && unit != Some(self.rate_unit) => {
                        self.reply("?NA")
                    }
                    (Some(v), Some(s))
                        if v * s <= self.max_rate_ul_min * (1.0 + 1e-9)
                            && (v == 0.0 || v * s >= min * (1.0 - 1e-9)) =>
                    {
                        self.rate_ul_min = v * s;
                        if let Some(u) = unit {
                            self.rate_unit = u;
                        }
                        self.reply("")
                    }
                    (Some(_), Some(_)) => self.reply("?OOR"),
                    _ => self.reply("?COM"),
                }
            }
            "VOL" if arg == "UL" || arg == "ML" => {
                self.volume_in_ml = arg == "ML";
                self.reply("")
            }
            "VOL" if arg.is_empty() => {
                let (v, u) = if self.volume_in_ml {
                    (self.volume_ul / 1000.0, "ML")
                } else {
                    (self.volume_ul, "UL")
                };
                let d = format!("{}{u}", format_number(v).unwrap_or_default());
                self.reply(d)
            }
            "VOL" => match num(arg) {
                Some(v) if v * self.ul_per_unit() <= self.capacity_ul => {
                    self.volume_ul = v * self.ul_per_unit();
                    self.reply("")
                }
                Some(_) => self.reply("?OOR"),
                None => self.reply("?COM"),
            },
            "DIR" => match arg {
                "INF" => {
                    self.direction = Direction::Infuse;
                    self.reply("")
                }
                "WDR" => {
                    self.direction = Direction::Withdraw;
                    self.reply("")
                }
                "REV" => {
                    self.direction = match self.direction {
                        Direction::Infuse => Direction::Withdraw,
                        Direction::Withdraw => Direction::Infuse,
                    };
                    self.reply("")
                }
                "" => {
                    let d = if self.direction == Direction::Infuse {
                        "INF"
                    } else {
                        "WDR"
                    };
                    self.reply(d)
                }
                _ => self.reply("?COM"),
            },
            "RUN" => {
                if self.rate_ul_min <= 0.0 {
                    self.reply("?NA")
                } else {
                    self.running = true;
                    self.run_moved_ul = 0.0;
                    self.reply("")
                }
            }
            "STP" => {
                self.running = false;
                self.reply("")
            }
            "DIS" => {
                let (scale, u) = if self.infused_ul.max(self.withdrawn_ul) < 9999.5 {
                    (1.0, "UL")
                } else {
                    (1000.0, "ML")
                };
                let f = |v: f64| format_number((v / scale).min(9999.0)).unwrap_or_default();
                self.reply(format!(
                    "I{}W{}{u}",
                    f(self.infused_ul),
                    f(self.withdrawn_ul)
                ))
            }
            "CLD" => match arg {
                "INF" => {
                    self.infused_ul = 0.0;
                    self.reply("")
                }
                "WDR" => {
                    self.withdrawn_ul = 0.0;
                    self.reply("")
                }
                _ => self.reply("?COM"),
            },
            "VER" => {
                let v = format!(
                    "{}V3.928",
                    self.model.map_or("NE1000", |m| m.version_prefix)
                );
                self.reply(v)
            }
            "SAF" if arg.is_empty() => {
                let v = self.safe_timeout_s.to_string();
                self.reply(v)
            }
            "SAF" => match arg.parse::<u8>() {
                Ok(n) => {
                    self.safe_timeout_s = n;
                    self.reply("")
                }
                Err(_) => self.reply("?OOR"),
            },
            _ => self.reply("?"),
        };
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infuses_to_target_and_stalls_when_empty() {
        let mut p = PumpSim::new(1, 500.0);
        assert_eq!(p.handle(b"01RAT60.00UM").unwrap().error(), None);
        p.handle(b"01VOL100.0");
        p.handle(b"01RUN");
        p.advance(60.0);
        assert!((p.infused_ul - 60.0).abs() < 1e-9);
        p.advance(60.0);
        assert!(!p.running);
        assert!((p.infused_ul - 100.0).abs() < 1e-9);
        p.handle(b"01VOL0");
        p.handle(b"01RUN");
        p.advance(1000.0);
        assert_eq!(p.content_ul, 0.0);
        assert_eq!(p.handle(b"01DIS").unwrap().state, PumpState::Alarm);
        assert_eq!(p.handle(b"01RAT9999MM").unwrap().error(), Some("?OOR"));
        assert!(p.handle(b"02RUN").is_none());
        assert_eq!(p.handle(b"01XYZ").unwrap().error(), Some("?"));
    }
}

#[cfg(test)]
mod prop {
    use super::*;

    proptest::proptest! {
        #[test]
        fn interpreter_never_panics(lines in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..24), 0..30),
                                    dts in proptest::collection::vec(0.0f64..1000.0, 0..30)) {
            let mut p = PumpSim::new(1, 500.0);
            for (i, l) in lines.iter().enumerate() {
                let _ = p.handle(l);
                p.advance(dts.get(i).copied().unwrap_or(1.0));
                proptest::prop_assert!(p.content_ul >= -1e-9 && p.content_ul <= p.capacity_ul + 1e-9);
            }
        }
    }
}
