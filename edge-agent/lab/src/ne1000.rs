//! NE-1000-family syringe pump RS-232 protocol: command encoding and reply framing, with no I/O.
//!
//! Command: `<address><command><data>\r`, e.g. `01RAT12.50UM\r`. Reply:
//! `STX <2-digit address> <status> [data] ETX`, where status is `I` (infusing), `W`
//! (withdrawing), `S` (stopped), `P` (paused), `T` (timed pause), `U` (user wait), `X` (purging)
//! or `A` (alarm, data `?R` reset, `?S` stalled, `?T` comms timeout, `?E` program error,
//! `?O` out of range). A data field beginning with `?` is an error: `?` (unknown command), `?NA`
//! (not applicable now), `?OOR` (out of range), `?COM` (bad packet), `?IGN` (ignored).
//! Numbers carry at most four digits and one decimal point.

use bytes::{Buf, BytesMut};

/// Start of a reply frame.
pub const STX: u8 = 0x02;
/// End of a reply frame.
pub const ETX: u8 = 0x03;
/// Longest reply frame accepted (STX..=ETX); anything longer is garbage.
pub const MAX_FRAME: usize = 48;

/// Pumping direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Infuse,
    Withdraw,
}

/// A command to the pump (driver side).
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Syringe inside diameter, mm.
    Diameter(f64),
    /// Pumping rate, µL/min (sent in µL/min, or in mL/min above 9999 µL/min).
    Rate(f64),
    /// Volume units to µL.
    VolumeUnitsUl,
    /// Volume units to mL (volumes above 9999 µL do not fit four digits in µL).
    VolumeUnitsMl,
    /// Volume to dispense, in the units last set (`VolumeUnitsUl` / `VolumeUnitsMl`).
    Volume(f64),
    Direction(Direction),
    Run,
    Stop,
    /// Query dispensed volumes; data `I<float>W<float>UL`.
    QueryDispensed,
    /// Query the programmed rate; data `<float><unit>` (`UM`, `MM`, `UH` or `MH`).
    QueryRate,
    /// Clear the dispensed volume of one direction.
    ClearDispensed(Direction),
    /// Query the firmware version.
    Version,
    /// Query the status only (empty command).
    Status,
}

/// A number could not be written in the pump's 4-digit format.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0} cannot be written as a pump number (0..=9999, four digits)")]
pub struct NumberFormatError(pub f64);

/// Format a non-negative number with at most four digits and one decimal point.
pub fn format_number(v: f64) -> Result<String, NumberFormatError> {
    if !v.is_finite() || !(0.0..9999.5).contains(&v) {
        return Err(NumberFormatError(v));
    }
    let s = if v >= 999.95 {
        format!("{v:.0}")
    } else if v >= 99.995 {
        format!("{v:.1}")
    } else if v >= 9.9995 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    };
    Ok(s)
}

/// Encode `cmd` for pump `address` (0..=99) as the bytes to write.
pub fn encode(address: u8, cmd: &Command) -> Result<Vec<u8>, NumberFormatError> {
    let body = match cmd {
        Command::Diameter(v) => format!("DIA{}", format_number(*v)?),
        Command::Rate(v) if *v < 9999.5 => format!("RAT{}UM", format_number(*v)?),
        Command::Rate(v) => format!("RAT{}MM", format_number(*v / 1000.0)?),
        Command::VolumeUnitsUl => "VOLUL".to_string(),
        Command::VolumeUnitsMl => "VOLML".to_string(),
        Command::Volume(v) => format!("VOL{}", format_number(*v)?),
        Command::Direction(Direction::Infuse) => "DIRINF".to_string(),
        Command::Direction(Direction::Withdraw) => "DIRWDR".to_string(),
        Command::Run => "RUN".to_string(),
        Command::Stop => "STP".to_string(),
        Command::QueryDispensed => "DIS".to_string(),
        Command::QueryRate => "RAT".to_string(),
        Command::ClearDispensed(Direction::Infuse) => "CLDINF".to_string(),
        Command::ClearDispensed(Direction::Withdraw) => "CLDWDR".to_string(),
        Command::Version => "VER".to_string(),
        Command::Status => String::new(),
    };
    Ok(format!("{:02}{}\r", address.min(99), body).into_bytes())
}

/// Pump state reported in a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PumpState {
    Infusing,
    Withdrawing,
    Stopped,
    Paused,
    TimedPause,
    UserWait,
    Purging,
    Alarm,
}

impl PumpState {
    pub fn from_char(c: u8) -> Option<Self> {
        Some(match c {
            b'I' => Self::Infusing,
            b'W' => Self::Withdrawing,
            b'S' => Self::Stopped,
            b'P' => Self::Paused,
            b'T' => Self::TimedPause,
            b'U' => Self::UserWait,
            b'X' => Self::Purging,
            b'A' => Self::Alarm,
            _ => return None,
        })
    }
    pub fn to_char(self) -> u8 {
        match self {
            Self::Infusing => b'I',
            Self::Withdrawing => b'W',
            Self::Stopped => b'S',
            Self::Paused => b'P',
            Self::TimedPause => b'T',
            Self::UserWait => b'U',
            Self::Purging => b'X',
            Self::Alarm => b'A',
        }
    }
}

/// One decoded reply frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub address: u8,
    pub state: PumpState,
    /// Data after the status character (may be empty).
    pub data: String,
}

impl Reply {
    /// The error code if the data is an error (`?`, `?NA`, `?OOR`, `?COM`, `?IGN`), when not an alarm.
    pub fn error(&self) -> Option<&str> {
        if self.state != PumpState::Alarm && self.data.starts_with('?') {
            Some(&self.data)
        } else {
            None
        }
    }

    /// Encode this reply as the device would send it.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.data.len() + 5);
        v.push(STX);
        v.extend_from_slice(format!("{:02}", self.address.min(99)).as_bytes());
        v.push(self.state.to_char());
        v.extend_from_slice(self.data.as_bytes());
        v.push(ETX);
        v
    }
}

/// Why a frame was rejected. The decoder has already skipped past it.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("reply frame longer than {MAX_FRAME} bytes without ETX")]
    TooLong,
    #[error("malformed reply frame: {0}")]
    Malformed(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reply framer: waits for a whole `STX .. ETX` frame, skips noise before STX, never panics.
#[derive(Debug, Default)]
pub struct ReplyCodec {
    /// Bytes discarded as noise so far (for diagnostics).
    pub discarded: u64,
}

impl ReplyCodec {
    fn parse(frame: &[u8]) -> Result<Reply, FrameError> {
        // frame excludes STX and ETX
        if frame.len() < 3 {
            return Err(FrameError::Malformed(format!(
                "{} byte(s) between STX and ETX",
                frame.len()
            )));
        }
        let (a, b) = (frame[0], frame[1]);
        if !a.is_ascii_digit() || !b.is_ascii_digit() {
            return Err(FrameError::Malformed("address is not two digits".into()));
        }
        let address = (a - b'0') * 10 + (b - b'0');
        let state = PumpState::from_char(frame[2]).ok_or_else(|| {
            FrameError::Malformed(format!("unknown status byte 0x{:02x}", frame[2]))
        })?;
        let data = &frame[3..];
        if !data.iter().all(|c| c.is_ascii_graphic() || *c == b' ') {
            return Err(FrameError::Malformed("non-printable data".into()));
        }
        let data = String::from_utf8_lossy(data).into_owned();
        Ok(Reply {
            address,
            state,
            data,
        })
    }
}

impl tokio_util::codec::Decoder for ReplyCodec {
    /// A reply, or the reason a frame was skipped. Frame problems are items, not stream errors,
    /// so a framed stream survives garbage on the line.
    type Item = Result<Reply, FrameError>;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, std::io::Error> {
        Ok(self.decode_frame(src).transpose())
    }
}

impl ReplyCodec {
    /// Decode one frame: `Ok(None)` = need more bytes; `Err` = a frame was skipped.
    pub fn decode_frame(&mut self, src: &mut BytesMut) -> Result<Option<Reply>, FrameError> {
        // Skip noise up to the first STX.
        match src.iter().position(|&c| c == STX) {
            None => {
                self.discarded += src.len() as u64;
                src.clear();
                return Ok(None);
            }
            Some(0) => {}
            Some(i) => {
                self.discarded += i as u64;
                src.advance(i);
            }
        }
        // src[0] == STX. A second STX before ETX restarts the frame there.
        let limit = src.len().min(MAX_FRAME);
        for i in 1..limit {
            match src[i] {
                ETX => {
                    let frame = src.split_to(i + 1);
                    return Self::parse(&frame[1..i]).map(Some);
                }
                STX => {
                    self.discarded += i as u64;
                    src.advance(i);
                    return self.decode_frame(src);
                }
                _ => {}
            }
        }
        if src.len() >= MAX_FRAME {
            self.discarded += 1;
            src.advance(1);
            return Err(FrameError::TooLong);
        }
        Ok(None)
    }
}

/// Parse the data of a `DIS` reply: `I<float>W<float>UL` → (infused, withdrawn) µL.
pub fn parse_dispensed(data: &str) -> Option<(f64, f64)> {
    let rest = data.strip_prefix('I')?;
    let w = rest.find('W')?;
    let infused: f64 = rest[..w].parse().ok()?;
    let tail = &rest[w + 1..];
    let (num, unit) = if let Some(n) = tail.strip_suffix("UL") {
        (n, 1.0)
    } else if let Some(n) = tail.strip_suffix("ML") {
        (n, 1000.0)
    } else {
        return None;
    };
    let withdrawn: f64 = num.parse().ok()?;
    if !infused.is_finite() || !withdrawn.is_finite() {
        return None;
    }
    Some((infused * unit, withdrawn * unit))
}

/// Parse the data of a `RAT` query reply: `<float><unit>` → µL/min (units `UM` µL/min, `MM`
/// mL/min, `UH` µL/h, `MH` mL/h).
pub fn parse_rate(data: &str) -> Option<f64> {
    let at = data.len().checked_sub(2)?;
    let (num, unit) = (data.get(..at)?, data.get(at..)?);
    let scale = match unit {
        "UM" => 1.0,
        "MM" => 1000.0,
        "UH" => 1.0 / 60.0,
        "MH" => 1000.0 / 60.0,
        _ => return None,
    };
    let v: f64 = num.parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some(v * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_have_four_digits() {
        assert_eq!(format_number(12.5).unwrap(), "12.50");
        assert_eq!(format_number(0.125).unwrap(), "0.125");
        assert_eq!(format_number(150.0).unwrap(), "150.0");
        assert_eq!(format_number(1000.0).unwrap(), "1000");
        assert!(format_number(10000.0).is_err());
        assert!(format_number(-1.0).is_err());
        assert!(format_number(f64::NAN).is_err());
    }

    #[test]
    fn encodes_commands() {
        assert_eq!(encode(1, &Command::Rate(12.5)).unwrap(), b"01RAT12.50UM\r");
        assert_eq!(
            encode(1, &Command::Rate(12_000.0)).unwrap(),
            b"01RAT12.00MM\r"
        );
        assert_eq!(encode(2, &Command::VolumeUnitsMl).unwrap(), b"02VOLML\r");
        assert_eq!(encode(0, &Command::Run).unwrap(), b"00RUN\r");
        assert_eq!(
            encode(3, &Command::Direction(Direction::Withdraw)).unwrap(),
            b"03DIRWDR\r"
        );
    }

    #[test]
    fn frames_wait_for_whole_reply_and_skip_noise() {
        let mut c = ReplyCodec::default();
        let mut b = BytesMut::from(&b"xx\x0201S1"[..]);
        assert!(c.decode_frame(&mut b).unwrap().is_none());
        b.extend_from_slice(b"4.43\x03");
        let r = c.decode_frame(&mut b).unwrap().unwrap();
        assert_eq!(
            r,
            Reply {
                address: 1,
                state: PumpState::Stopped,
                data: "14.43".into()
            }
        );
        assert_eq!(c.discarded, 2);
        let mut b = BytesMut::from(&b"\x0200S?OOR\x03"[..]);
        assert_eq!(
            c.decode_frame(&mut b).unwrap().unwrap().error(),
            Some("?OOR")
        );
        let mut b = BytesMut::from(&b"\x0200Z\x03\x0200I\x03"[..]);
        assert!(c.decode_frame(&mut b).is_err());
        assert_eq!(
            c.decode_frame(&mut b).unwrap().unwrap().state,
            PumpState::Infusing
        );
    }

    #[test]
    fn parses_dispensed() {
        assert_eq!(parse_dispensed("I12.50W0.000UL"), Some((12.5, 0.0)));
        assert_eq!(parse_dispensed("I1.000W2.000ML"), Some((1000.0, 2000.0)));
        assert_eq!(parse_dispensed("I1W"), None);
    }

    #[test]
    fn parses_rate() {
        assert_eq!(parse_rate("12.50UM"), Some(12.5));
        assert_eq!(parse_rate("1.000MM"), Some(1000.0));
        assert!((parse_rate("60.00UH").unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(parse_rate("UM"), None);
        assert_eq!(parse_rate("12.5"), None);
        assert_eq!(parse_rate("-1.0UM"), None);
        assert_eq!(parse_rate("1é"), None);
        assert_eq!(encode(1, &Command::QueryRate).unwrap(), b"01RAT\r");
    }

    proptest::proptest! {
        #[test]
        fn decoder_never_panics(chunks in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..40), 0..20)) {
            let mut c = ReplyCodec::default();
            let mut b = BytesMut::new();
            for ch in chunks {
                b.extend_from_slice(&ch);
                while let Ok(Some(_)) | Err(_) = c.decode_frame(&mut b) {
                    if b.is_empty() { break; }
                }
                proptest::prop_assert!(b.len() < MAX_FRAME + 40);
            }
        }
    }
}
